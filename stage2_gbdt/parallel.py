"""Run independent tasks with joblib: local processes, or a Ray cluster via joblib's Ray backend.

Big arrays are handed over once: joblib's loky backend memory-maps numpy arrays above 1 MB for
its workers; for Ray they go to the object store (`ray.put`) and tasks get references, so a
(target, fold) task never ships the whole feature matrix again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import joblib
from tqdm.auto import tqdm


class SharedArrays:
    """Arrays every task reads; `get(name)` in the task returns the array itself."""

    def __init__(self, arrays: dict[str, Any], use_ray: bool):
        if use_ray:
            import ray

            arrays = {k: (ray.put(v) if v is not None else None) for k, v in arrays.items()}
        self._arrays = arrays
        self._use_ray = use_ray

    def get(self, name: str) -> Any:
        value = self._arrays[name]
        if self._use_ray and value is not None:
            import ray

            return ray.get(value)
        return value


@contextlib.contextmanager
def ray_session(address: str | None, n_jobs: int) -> Iterator[None]:
    """Use the running Ray (a test's, a cluster's), else start a local one and stop it after."""
    try:
        import ray
        from ray.util.joblib import register_ray
    except ImportError as err:
        from trajstack.config import ConfigError

        raise ConfigError("stage2.executor=ray needs the ray extra: pip install -e '.[ray]'") from err
    started = False
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": n_jobs}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
        started = True
    register_ray()
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], n_jobs: int = 1,
              executor: str = "joblib", desc: str = "fits",
              on_result: Callable[[Any], None] | None = None) -> list[Any]:
    """`[fn(*task) for task in tasks]`, in task order, in parallel.

    Parameters
    ----------
    fn : a module-level function (it is pickled to the workers).
    tasks : argument tuples.
    n_jobs : parallel workers (1: in this process, no pool).
    executor : "joblib" (loky processes) or "ray" (joblib's Ray backend; call inside
        `ray_session`).
    on_result : called with each result as it arrives (to save it before the others finish).
    """
    on_result = on_result or (lambda result: None)
    progress = tqdm(total=len(tasks), desc=desc, leave=False, disable=None)
    try:
        if n_jobs == 1 and executor == "joblib":
            results = []
            for task in tasks:
                results.append(fn(*task))
                on_result(results[-1])
                progress.update()
            return results
        backend = "ray" if executor == "ray" else "loky"
        # Ray's backend cannot stream results (return_as="generator"): it reports at the end.
        return_as = "list" if executor == "ray" else "generator"
        with joblib.parallel_backend(backend, n_jobs=n_jobs):
            parallel = joblib.Parallel(return_as=return_as)
            results = []
            for result in parallel(joblib.delayed(fn)(*task) for task in tasks):
                results.append(result)
                on_result(result)
                progress.update()
            return results
    finally:
        progress.close()
