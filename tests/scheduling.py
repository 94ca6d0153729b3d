"""How the xdist workers share the suite (``--dist loadscope``, refined; see conftest.py).

xdist's loadscope hands out whole modules, most tests first. Most of our modules are
quick, but a few wait 20-40 s in all on timers, subprocesses and servers (or fuzz for as
long): given whole, such a module kept one worker busy long after the others were done.

- ``SPLIT`` modules are handed out test by test. Their tests share no module-scoped
  fixture, so nothing is set up twice but the per-worker session servers (redis-server,
  PostgreSQL), which those workers start anyway; test_fuzz's module-scoped gateway is a
  thread on each worker that runs one. Every other module stays whole: its module-scoped
  servers start once.
- ``SLOW_FIRST`` names what took longest in a full run (``--durations``): those go out
  first, tests that wait rather than compute ahead of the rest. The rest follows in
  loadscope's order. A stale list costs time, never a result.
- ``ONCE`` names what a worker pays for once, on first use: the SDKs' import (anthropic's
  pydantic models are ~2 s of CPU, openai's ~0.9 s) or a server of its own (PostgreSQL's
  initdb and start). A worker that has paid for one is handed those tests first; the
  others leave them to it while they have other work, and take them when nothing else is
  left (work is never held back). A stale list costs CPU, never a result.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadScopeScheduling

SPLIT = frozenset(
    f"tests/{name}.py"
    for name in (
        "test_fuzz",
        "test_scaleout",
        "test_keys_spend",
        "test_keys_admin",
        "test_keys_limits",
        "test_cli",
        "test_cli_observability",
        "test_server_limits",
        "test_router_http",
        "test_threads",
    )
)

SLOW_FIRST = (
    # Tests that mostly wait: they overlap the computing ones that follow.
    "tests/test_scaleout.py::test_in_flight_is_shared",
    "tests/test_scaleout.py::test_redis_killed_mid_load",
    "tests/test_cli.py::test_two_workers_share_the_port",
    "tests/test_keys_spend.py::test_a_database_restarted_mid_load",
    "tests/test_cli_observability.py::test_two_workers",
    # Then the long ones that compute.
    "tests/test_fuzz.py::test_fuzz_model_calls[POST /v1/chat/completions]",
    "tests/test_fuzz.py::test_fuzz_model_calls",
    "tests/test_keys_spend.py::test_spend_totals_equal_the_logs",
    "tests/test_openai_gateway.py",
    "tests/test_fuzz.py::test_fuzz_front_doors",
    "tests/test_scaleout.py",
    "tests/test_keys_ui.py",
    "tests/test_cli.py",
)

ONCE = {
    # One cost: the modules that use both SDKs would otherwise pull the two owners'
    # costs together (pydantic and httpx are shared, so both together cost less).
    "sdks": (
        "tests/test_e2e_openai.py",
        "tests/test_frontdoors_completions.py",
        "tests/test_frontdoors_messages.py",  # anthropic
        "tests/test_frontdoors_readme.py",  # both: the README's examples, run in-process
        "tests/test_frontdoors_responses.py",
        "tests/test_frontdoors_routing.py",  # both
        "tests/test_frontdoors_translate.py",  # anthropic
        "tests/test_mock_provider.py",
        "tests/test_openai_gateway.py",
        "tests/test_openapi.py",
    ),
    # The split keys modules' PostgreSQL tests, and test_keys_store's (a whole module).
    "postgres": ("[postgres", "tests/test_keys_store.py"),
}


class Scheduling(LoadScopeScheduling):
    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        self._ordered = False
        self._paid: dict[Any, set[str]] = {}

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return nodeid if module in SPLIT else module

    def _assign_work_unit(self, node: Any) -> None:
        # The base class hands out the queue's first unit: the slowest go to the front
        # (a stable sort: the rest keeps its order), once the queue is complete.
        if not self._ordered:
            units = sorted(self.workqueue.items(), key=lambda unit: _rank(unit[0]))
            self.workqueue.clear()
            self.workqueue.update(units)
            self._ordered = True
        scope = self._pick(node)
        self.workqueue.move_to_end(scope, last=False)
        self._paid.setdefault(node, set()).update(_once(scope))
        super()._assign_work_unit(node)

    def _pick(self, node: Any) -> str:
        """The first unit that costs ``node`` nothing another worker has paid for."""
        paid = self._paid.get(node, set())
        elsewhere = set().union(*(p for n, p in self._paid.items() if n is not node)) - paid
        for scope in self.workqueue:
            if not _once(scope) & elsewhere:
                return scope
        return next(iter(self.workqueue))


def _once(scope: str) -> set[str]:
    return {cost for cost, marks in ONCE.items() if any(mark in scope for mark in marks)}


def _rank(scope: str) -> int:
    return next((i for i, slow in enumerate(SLOW_FIRST) if scope.startswith(slow)), len(SLOW_FIRST))
