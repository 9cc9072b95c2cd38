"""What a job produced, for people: the job history, the report page, and side-by-side
comparisons.

Read-only over the store; it sits beside the launcher, which never needs it (a launch only
names the command that writes its report)."""
