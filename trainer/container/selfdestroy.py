"""The instance destroying itself through Vast.ai's API with its own, instance-scoped key.

The training image does not carry the `vastai` client (38 pinned packages) for this one call:
a DELETE with the key Vast.ai injects as `CONTAINER_API_KEY`, which can only start, stop or
destroy this very instance. The account's API key never enters the container."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

log = logging.getLogger("quantlab.container")


def destroy_self(vast_url: str, container_id: str, api_key: str, attempts: int = 5) -> bool:
    """DELETE /api/v0/instances/{id}/; 404 means already gone. True when it is gone."""
    url = f"{vast_url}/api/v0/instances/{container_id}/"
    delay = 1.0
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(
            url,
            data=b"{}",
            method="DELETE",
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = json.loads(response.read() or b"{}")
                if body.get("success", True):
                    log.info("destroy requested for instance %s", container_id)
                    return True
                reason = str(body.get("error") or body.get("msg") or "success=false")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                log.info("instance %s is already gone", container_id)
                return True
            reason = f"HTTP {exc.code}"
            if exc.code not in {429, 500, 502, 503, 504}:
                log.error(
                    "cannot destroy instance %s: %s; the launcher will destroy it",
                    container_id,
                    reason,
                )
                return False
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = type(exc).__name__
        log.warning(
            "destroy of instance %s failed (%s), attempt %d/%d",
            container_id,
            reason,
            attempt,
            attempts,
        )
        time.sleep(delay)
        delay = min(delay * 2, 15.0)
    return False
