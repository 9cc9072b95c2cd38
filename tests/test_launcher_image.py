"""A launch whose instance is the real training image under Docker: the fake Vast.ai rents,
`docker run`s the image the spec names, and the container trains, commits, and destroys its
own instance with its own key, against loopback S3 and the fake over host networking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.image_env import Engine
from tests.launcher_env import lab, leftover_containers, tiny_spec, wait_for, with_data
from trainer.job.artifacts import verify
from trainer.store import ObjectStore
from trainer.store.layout import Layout

pytestmark = pytest.mark.slow  # containers and an end-to-end launch: the slow tier


def test_launch_runs_the_image_from_create_to_self_destroy(
    engine: Engine, s3_env: dict[str, str], s3_store: ObjectStore, tmp_path: Path
) -> None:
    spec = tiny_spec("img-launch", resources={"image": engine.image})
    with lab(s3_store, tmp_path, engine=engine) as env:
        with_data(env.store, spec)
        handle = env.launch(spec)
        result = handle.wait()

        assert result.outcome == "succeeded" and result.exit_code == 0, env.human.getvalue()
        (attempt,) = result.attempts
        instance_id = attempt["instance_id"]
        assert env.fake.requests_to("create")[0].body["image"] == engine.image
        # The container ends once it has destroyed its instance: exited, or killed (137) by
        # the stop that destroy brings if it is still unwinding when the grace runs out.
        wait_for(lambda: instance_id in env.containers.codes)
        assert env.containers.codes[instance_id] in (0, 137)
        instance_key = env.fake.instance_key(instance_id)
        destroys = [r.headers.get("Authorization") for r in env.fake.requests_to("destroy")]
        assert destroys[0] == f"Bearer {instance_key}"  # the container destroyed itself
        env.assert_clean()

        paths = Layout().job("img-launch")
        (tmp_path / "check").mkdir()
        verify(env.store, paths, tmp_path / "check")
        status = json.loads(env.store.get(paths.status))
        image_python = engine.docker(
            "run", "--rm", "--network=none", "--entrypoint", "python", engine.image,
            "-c", "import platform; print(platform.python_version())",
        ).stdout.strip()  # fmt: skip
        assert status["host"]["python"] == image_python  # the job ran in the image
        assert status["state"] == "succeeded"
        shipped = env.store.get(paths.log(str(instance_id))).decode()
        assert "committed" in shipped and "committed" in env.containers.all_output()

        secrets = [env.fake.api_key, instance_key, s3_env["AWS_SECRET_ACCESS_KEY"]]
        sent = env.fake.requests_to("create")[0].body["env"]
        secrets += [sent["AWS_SECRET_ACCESS_KEY"], sent["AWS_SESSION_TOKEN"]]
        for text in (env.containers.all_output(), shipped, env.human.getvalue()):
            assert all(secret not in text for secret in secrets)
        # The container ended on its own and --rm removed it; nothing for the cleanup to do.
        assert leftover_containers(engine, env.containers.label) == []
