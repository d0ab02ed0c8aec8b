"""Waiting on what the daemon shows (its status), never on a fixed sleep."""

import json
import time


def status(tree) -> dict:
    result = tree.run("status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(predicate, *, timeout: float, every: float = 0.2, proc=None, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the daemon exited ({proc.returncode}) while waiting for {what}:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def job(tree, name: str) -> dict | None:
    return next((j for j in status(tree)["jobs"] if j["name"] == name), None)
