"""Many slides on a Dask cluster: one task per slide, on worker processes of this machine or of a cluster.

:func:`qpbridge.predict.predict_slides` hands a batch here when ``workers > 1`` (``qpbridge predict --workers N``:
a :class:`distributed.LocalCluster` of N worker processes, started and closed with the batch) or a ``scheduler``
is given (``--scheduler ADDRESS`` or ``$QPBRIDGE_SCHEDULER``: a cluster that is already running, e.g. on Slurm with
dask-jobqueue). One slide is one task: the block-level work of a slide stays inside its worker, which writes the
slide's GeoJSON and ``.meta.json`` itself, atomically, as the serial path does.

=============================  ==================================================================================
:func:`plan_workers`           the local workers: names, torch threads (cores // N), environment (OpenMP's wait
                               policy, oneDNN's caches, ``CUDA_VISIBLE_DEVICES`` per GPU worker), resources
:func:`start_local_cluster`    a LocalCluster of those workers (each with its own environment)
:func:`run_slide`              the worker task: one slide -> its outputs and a :class:`SlideOutcome`
:class:`ModelCache`            models loaded once per worker process (keyed by model directory, weights sha256,
                               role and device), not once per slide
:func:`predict_batch`          the client: finished slides skipped before submitting, one task per slide, a failed
                               slide retried once then reported, progress across slides, the run summary
:func:`write_run_summary`      ``<out folder>/qpbridge-run.json`` (the serial batch writes it too)
=============================  ==================================================================================

Dask is an optional dependency (``pip install 'qpbridge[distributed]'``): this module imports it only inside the
functions that need it, and it does not import torch either, so importing it (the serial batch does, for the run
summary) costs nothing. A worker lost in the middle of a slide leaves only a hidden temporary beside the output,
never a finished-looking file; Dask reruns the slide on another worker, whose own temporary has another name, and
the temporaries left beside a slide's outputs are removed once it is finished.

Example
-------
>>> [(w.name, w.threads, w.env["OMP_NUM_THREADS"], w.env.get("CUDA_VISIBLE_DEVICES"))
...  for w in plan_workers(2, cores=16, gpus=["0", "1"], environ={})]
[('gpu0', 8, '8', '0'), ('gpu1', 8, '8', '1')]
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qpbridge import __version__
from qpbridge.atomic import atomic_write_text
from qpbridge.errors import InputError, QpbridgeError
from qpbridge.memory import CACHE_ENV
from qpbridge.predict.config import PredictConfig

if TYPE_CHECKING:  # torch, the pipeline and Dask are imported where they are used, not with this module
    from distributed import Client, LocalCluster

    from qpbridge.models import LoadedModel
    from qpbridge.predict.config import Progress
    from qpbridge.predict.pipeline import BatchPlan, BatchSummary, SlideJob, SlideOutcome

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DIE_EXIT_CODE",
    "DIE_ONCE_ENV",
    "INSTALL_HINT",
    "MAX_ATTEMPTS",
    "RUN_SUMMARY_NAME",
    "SCHEDULER_ENV",
    "ModelCache",
    "WorkerPlan",
    "model_cache",
    "plan_workers",
    "predict_batch",
    "prepare_worker_process",
    "require_distributed",
    "run_slide",
    "run_summary",
    "start_local_cluster",
    "task_resources",
    "visible_gpus",
    "worker_env_defaults",
    "write_run_summary",
]

logger = logging.getLogger(__name__)

#: What to install for ``--workers N`` / ``--scheduler``.
INSTALL_HINT = "pip install 'qpbridge[distributed]'"
#: The environment variable that names a running cluster's scheduler (what ``--scheduler`` gives).
SCHEDULER_ENV = "QPBRIDGE_SCHEDULER"
#: The run summary a batch writes into its output folder.
RUN_SUMMARY_NAME = "qpbridge-run.json"
#: A slide runs at most this often when it fails (a failed slide is retried once, then reported).
MAX_ATTEMPTS = 2
#: Seconds to wait for an existing cluster's scheduler to answer.
CONNECT_TIMEOUT_S = 20
#: Test hook: a file path; the first worker process that finds a file there during a slide removes it and dies
#: (``os._exit``) in the middle of that slide, as a worker killed by the OOM killer or a lost node would.
DIE_ONCE_ENV = "QPBRIDGE_TEST_DIE_ONCE"
#: Exit status of a worker that the test hook ended.
DIE_EXIT_CODE = 75


def require_distributed(workers: int = 1, scheduler: str | None = None) -> None:
    """Check the options that hand a batch to Dask, and that Dask's ``distributed`` is installed (without
    importing it).

    >>> require_distributed(1, None)
    >>> require_distributed(0)
    Traceback (most recent call last):
    ...
    qpbridge.errors.InputError: --workers must be >= 1, got 0
    """
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and scheduler:
        raise InputError(
            f"--workers {workers} starts a cluster on this machine and --scheduler {scheduler} uses a running one "
            f"(${SCHEDULER_ENV} sets --scheduler): give one of them")
    if (workers > 1 or scheduler) and importlib.util.find_spec("distributed") is None:
        option = f"--workers {workers}" if workers > 1 else "--scheduler"
        raise InputError(f"{option} runs slides on Dask, which is not installed: {INSTALL_HINT}")


# ------------------------------------------------------------------------------------------- the workers
@dataclass(frozen=True)
class WorkerPlan:
    """One worker process of a local cluster: its name, torch threads, environment and Dask resources."""

    name: str
    threads: int
    env: dict[str, str]
    resources: dict[str, float] = field(default_factory=dict)


def worker_env_defaults(threads: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a worker process starts with (the user's own settings win): OpenMP waits passively (as
    the ``qpbridge`` command sets it; spin-waiting fell 5-7x on shared nodes), oneDNN's caches are pinned
    (:data:`qpbridge.memory.CACHE_ENV`), OpenMP, MKL and OpenBLAS use the worker's ``threads``.

    >>> worker_env_defaults(3, {"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"]
    'ACTIVE'
    """
    environ = os.environ if environ is None else environ
    env = {"OMP_WAIT_POLICY": "PASSIVE", **CACHE_ENV}
    env = {key: environ.get(key, value) for key, value in env.items()}
    env.update({key: str(threads) for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    return env


def visible_gpus(device_count: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (indices or UUIDs): its own
    ``CUDA_VISIBLE_DEVICES`` where set, else ``0 .. device_count - 1``.

    >>> visible_gpus(4, {})
    ['0', '1', '2', '3']
    >>> visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "2,3"})
    ['2', '3']
    """
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [name.strip() for name in listed.split(",") if name.strip()][:device_count]
    return [str(i) for i in range(device_count)]


def plan_workers(
    n_workers: int, *, cores: int, gpus: Sequence[str] | None = None, threads: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[WorkerPlan]:
    """The worker processes of a local cluster of ``n_workers``: each runs one slide at a time with ``threads``
    torch threads (default ``cores // n_workers``, at least 1). With ``gpus`` (``CUDA_VISIBLE_DEVICES`` names),
    worker i sees GPU ``gpus[i % len(gpus)]`` alone (``--device cuda`` in it is that GPU) and declares the Dask
    resource ``GPU=1``: one worker per GPU when ``n_workers == len(gpus)``; more workers share GPUs.

    >>> [(w.name, w.threads, w.env["CUDA_VISIBLE_DEVICES"]) for w in plan_workers(3, cores=8, gpus=["0", "1"])]
    [('gpu0', 2, '0'), ('gpu1', 2, '1'), ('gpu0-1', 2, '0')]
    >>> [(w.name, w.threads, w.resources) for w in plan_workers(2, cores=2)]
    [('cpu0', 1, {}), ('cpu1', 1, {})]
    """
    if n_workers < 1:
        raise InputError(f"--workers must be >= 1, got {n_workers}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    if gpus is not None and not gpus:
        raise InputError("--device cuda with --workers: torch sees no GPU here; use --device cpu")
    per_worker = threads if threads is not None else max(1, cores // n_workers)
    plans = []
    for i in range(n_workers):
        env = worker_env_defaults(per_worker, environ)
        if gpus:
            gpu = gpus[i % len(gpus)]
            rank = i // len(gpus)
            env["CUDA_VISIBLE_DEVICES"] = gpu
            plans.append(WorkerPlan(f"gpu{gpu}" + (f"-{rank}" if rank else ""), per_worker, env, {"GPU": 1.0}))
        else:
            plans.append(WorkerPlan(f"cpu{i}", per_worker, env))
    return plans


def start_local_cluster(plans: Sequence[WorkerPlan], *, memory_limit: str | int | None = None) -> LocalCluster:
    """A :class:`distributed.LocalCluster` of one worker process per plan (one Dask thread each: a slide is the
    unit), each started with its plan's environment, so that OpenMP reads it before torch is imported there.

    ``memory_limit`` per worker defaults to Dask's share of this machine's memory (total / workers): a worker that
    passes 95% of it is restarted and its slide rerun. A slide's arrays are the task's own ("unmanaged" to Dask),
    so Dask's spilling and pausing, and their warnings, are off. Dask's own defaults for a worker's environment
    before it starts (``MALLOC_TRIM_THRESHOLD_``, single-threaded OpenMP) are left out: the workers allocate as
    the serial path does, and the process that starts them keeps its environment.
    """
    import dask
    from distributed import LocalCluster
    from distributed.system import MEMORY_LIMIT

    limit = memory_limit if memory_limit is not None else MEMORY_LIMIT // max(1, len(plans))
    settings = {
        "distributed.nanny.pre-spawn-environ": {},
        "distributed.scheduler.worker-saturation": 1.0,  # a slide waits at the scheduler, not behind another
        "distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.admin.tick.limit": "60s",  # a busy slide may hold a worker's event loop for seconds
    }
    with dask.config.set(settings):
        cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=True, dashboard_address=None,
                               scheduler_kwargs={"dashboard": False})
        try:
            base = cluster.new_spec
            for plan in plans:
                options = {**base["options"], "nthreads": 1, "env": dict(plan.env), "memory_limit": limit,
                           "resources": dict(plan.resources) or None}
                cluster.worker_spec[plan.name] = {"cls": base["cls"], "options": options}
            cluster.scale(len(plans))
            cluster.wait_for_workers(len(plans))  # the Nannies read the settings above while they start
        except BaseException:
            cluster.close()
            raise
    return cluster


# ------------------------------------------------------------------------------------------- the worker side
def prepare_worker_process() -> None:
    """Before the first slide of a worker imports torch: OpenMP waits passively and oneDNN's caches are pinned,
    unless the worker's environment says otherwise (the local cluster's workers start with these; on a running
    cluster this sets them in time if the worker has not imported torch yet)."""
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        for key, value in CACHE_ENV.items():
            os.environ.setdefault(key, value)


class ModelCache:
    """Models loaded once per worker process, not once per slide: a small LRU of
    :class:`qpbridge.models.LoadedModel`, keyed by model directory, weights sha256 (from the card, so a retrained
    model in the same place is loaded again), role and device. Each call returns a shallow copy, so that the
    pipeline's own per-slide changes (folding batch norms into a copy of the network) never touch the cache.

    >>> calls = []
    >>> def fake(path, *, role=None, device="cpu"):
    ...     calls.append(path)
    ...     return f"model {path} {role}"
    >>> cache = ModelCache(max_models=2, load=fake, key=lambda path, role, device: (path, role, str(device)))
    >>> [cache("roi", role="roi"), cache("roi", role="roi"), cache("cell", role="cell")][1], calls
    ('model roi roi', ['roi', 'cell'])
    >>> (cache.loads, cache.hits)
    (2, 1)
    """

    def __init__(
        self, max_models: int = 4, *, load: Callable[..., Any] | None = None,
        key: Callable[[Any, str | None, Any], tuple[Any, ...]] | None = None,
    ) -> None:
        self.max_models = max_models
        self._load = load
        self._key = key or _model_key
        self._models: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.hits = 0

    def __call__(self, name_or_path: str | os.PathLike[str], *, role: str | None = None,
                 device: Any = "cpu") -> LoadedModel:
        """The model ``load_model(name_or_path, role=role, device=device)`` gives, loaded at most once."""
        key = self._key(name_or_path, role, device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                self.hits += 1
                return _copy(self._models[key])
            if self._load is None:
                from qpbridge.models import load_model

                self._load = load_model
            model = self._load(name_or_path, role=role, device=device)
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return _copy(model)

    def clear(self) -> None:
        """Forget every model (and the counts)."""
        with self._lock:
            self._models.clear()
            self.loads = self.hits = 0


def _model_key(name_or_path: Any, role: str | None, device: Any) -> tuple[Any, ...]:
    from qpbridge.models import CARD_FILE, load_card, resolve_model_path

    directory = resolve_model_path(name_or_path).resolve()
    return (directory, load_card(directory / CARD_FILE).weights_sha256, role, str(device))


def _copy(model: Any) -> Any:
    """A shallow copy of a loaded model (the network shared), so that a slide may replace the copy's network
    (BatchNorm folded) freely; anything else (a test's stand-in) as it is."""
    from dataclasses import is_dataclass

    return replace(model) if is_dataclass(model) and not isinstance(model, type) else model


_WORKER_MODELS = ModelCache()


def model_cache() -> ModelCache:
    """This process's model cache (each worker process has its own), e.g. for its counts:
    ``client.run(lambda: model_cache().loads)``."""
    return _WORKER_MODELS


def _worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # not inside a Dask worker (called directly)
        return None


def _die_once_hook(job: SlideJob) -> Progress | None:
    """The test hook of :data:`DIE_ONCE_ENV`, as a progress callback (called with the writer's temporary open);
    the slide it ended is written to ``<marker>.died``."""
    marker = os.environ.get(DIE_ONCE_ENV)
    if not marker:
        return None

    def progress(stage: str, done: int, total: int, windows: int) -> None:
        if done < 1:
            return
        try:
            os.unlink(marker)  # only one process wins
        except FileNotFoundError:
            return
        Path(marker + ".died").write_text(str(job.slide))
        logger.warning("%s: ending this worker process in the middle of %s (test hook)", DIE_ONCE_ENV, job.slide)
        os._exit(DIE_EXIT_CODE)

    return progress


def run_slide(job: SlideJob, config: PredictConfig, overwrite: bool = False) -> SlideOutcome:
    """The task of one slide, run in a worker: predict it (models from this worker's :class:`ModelCache`), write
    its outputs atomically, and say what became of it. A :class:`QpbridgeError` (an unreadable slide...) and any
    other exception (logged with its traceback in the worker's log) become a ``failed`` outcome with the message;
    a slide whose output is finished already (a rerun after the worker that finished it was lost) is ``skipped``
    unless ``overwrite``. ``config.threads`` None means: the worker's cores shared by its Dask threads.
    """
    prepare_worker_process()
    from qpbridge.device import usable_cpu_count
    from qpbridge.predict.pipeline import SlideOutcome, is_finished, predict_slide

    worker = _worker()
    address = worker.address if worker is not None else None
    clock = time.perf_counter()
    if not overwrite and is_finished(job.output):
        return SlideOutcome(job, "skipped", seconds=0.0, worker=address)
    if config.threads is None:
        dask_threads = worker.state.nthreads if worker is not None else 1
        config = replace(config, threads=max(1, usable_cpu_count() // max(1, dask_threads)))
    try:
        summary = predict_slide(job.slide, job.output, config, progress=_die_once_hook(job),
                                model_loader=model_cache())
    except QpbridgeError as exc:
        return SlideOutcome(job, "failed", error=exc, seconds=time.perf_counter() - clock, worker=address)
    except Exception as exc:  # a bug or the system (memory...): this slide fails, the batch goes on
        logger.exception("slide %s failed", job.slide)
        error = QpbridgeError(f"{type(exc).__name__}: {exc}")
        return SlideOutcome(job, "failed", error=error, seconds=time.perf_counter() - clock, worker=address)
    return SlideOutcome(job, "done", summary=summary, seconds=time.perf_counter() - clock, worker=address)


# ------------------------------------------------------------------------------------------- the client side
@contextmanager
def _client(
    workers: int, scheduler: str | None, config: PredictConfig
) -> Iterator[tuple[Client, PredictConfig, dict[str, float] | None, str]]:
    """A client of a running cluster or of a local one started for the batch; the config the tasks get; the
    resources each task asks for; the scheduler's address."""
    from distributed import Client

    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc}): start it, or check "
                             f"--scheduler / ${SCHEDULER_ENV}") from None
        with client:
            resources = None
            if config.device == "auto" or config.device.startswith("cuda"):
                client.wait_for_workers(1)  # a cluster still queueing its jobs: what its workers declare decides
                declared = client.run_on_scheduler(
                    lambda dask_scheduler: [dict(w.resources) for w in dask_scheduler.workers.values()])
                resources = task_resources(config.device, declared)
            yield client, config, resources, scheduler
        return

    import torch

    from qpbridge.device import resolve_device, usable_cpu_count

    device = resolve_device(config.device)
    gpus = None
    task_config = config
    if device.type == "cuda":
        gpus = visible_gpus(torch.cuda.device_count())
        if device.index is not None:
            gpus = [gpus[device.index]]
        task_config = replace(config, device="cuda")  # each worker sees its GPU alone
    plans = plan_workers(workers, cores=usable_cpu_count(), gpus=gpus, threads=config.threads)
    task_config = replace(task_config, threads=plans[0].threads)
    cluster = start_local_cluster(plans)
    try:
        with Client(cluster) as client:
            yield client, task_config, {"GPU": 1.0} if gpus else None, str(cluster.scheduler_address)
    finally:
        nanny = logging.getLogger("distributed.nanny")
        quiet = _SlowExitFilter()
        nanny.addFilter(quiet)
        try:
            cluster.close()
        finally:
            nanny.removeFilter(quiet)


class _SlowExitFilter(logging.Filter):
    """Drops the Nanny's warning that a worker was still tearing its interpreter down (torch and the slide
    libraries take seconds on a busy machine) when it was ended at the close: its slides are all written."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "still alive after" not in record.getMessage()


def task_resources(device: str, declared: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """The Dask resources a slide's task asks for on a running cluster: ``GPU=1`` when ``device`` may be a GPU
    (``cuda``, ``cuda:N``, ``auto``) and some worker declares GPUs (``dask worker --resources GPU=1``), so that
    each GPU runs one slide at a time; otherwise none.

    >>> task_resources("cuda", [{"GPU": 1}, {}]), task_resources("cuda", [{}]), task_resources("cpu", [{"GPU": 1}])
    ({'GPU': 1.0}, None, None)
    """
    gpu_asked = device == "auto" or device.startswith("cuda")
    return {"GPU": 1.0} if gpu_asked and any("GPU" in r for r in declared) else None


def _failure(job: SlideJob, exc: BaseException) -> tuple[SlideOutcome, bool]:
    """The outcome of a task that raised instead of returning, and whether to run it again (not when Dask gave
    up after its workers kept dying: it has rerun it already)."""
    from qpbridge.predict.pipeline import SlideOutcome

    if type(exc).__name__ == "KilledWorker":
        message = (f"the workers running it died each time ({exc}): it may need more memory than a worker has, "
                   "or crash the slide reader; run it alone (without --workers) to see")
        return SlideOutcome(job, "failed", error=QpbridgeError(message)), False
    return SlideOutcome(job, "failed", error=QpbridgeError(f"{type(exc).__name__}: {exc}")), True


def predict_batch(
    plan: BatchPlan,
    config: PredictConfig,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    warn: Callable[[str], None] | None = None,
    report: Callable[[SlideOutcome], None] | None = None,
    slides_progress: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Run a batch's slides as Dask tasks, one per slide (see the module's docstring), and write the run summary
    into the output folder.

    Slides whose outputs are finished are skipped before anything is submitted (unless ``overwrite``), and jobs
    planned to fail (:attr:`SlideJob.error <qpbridge.predict.pipeline.SlideJob.error>`) fail there; the rest
    run on a local cluster of ``workers`` processes (``workers == 1`` included: one worker process), or on the
    cluster of ``scheduler``. A slide that fails is submitted again once; a slide whose worker is lost is rerun
    by Dask itself. ``report`` hears each outcome as it comes (completion order), ``slides_progress`` (slides
    done, slides to run) after each, ``warn`` each retry and each slide's warnings. The outcomes are returned in
    slide order.
    """
    import uuid

    from distributed import as_completed

    from qpbridge.predict.pipeline import BatchSummary, SlideOutcome, is_finished

    started = time.time()
    outcomes: list[SlideOutcome | None] = [None] * len(plan.jobs)
    todo: list[int] = []
    for i, job in enumerate(plan.jobs):
        if job.error is not None or (not overwrite and is_finished(job.output)):  # planned to fail, or finished
            planned = outcomes[i] = (SlideOutcome(job, "skipped") if job.error is None
                                     else SlideOutcome(job, "failed", error=InputError(job.error)))
            if report is not None:
                report(planned)
        else:
            todo.append(i)
    address = scheduler
    try:
        if todo:
            address = _run_tasks(plan, config, todo, outcomes, workers=workers, scheduler=scheduler,
                                 overwrite=overwrite, warn=warn, report=report, slides_progress=slides_progress,
                                 batch=uuid.uuid4().hex[:8], as_completed=as_completed)
    finally:
        done = [o for o in outcomes if o is not None]
        folder = plan.jobs[0].output.parent if plan.jobs else None
        if folder is not None:
            write_run_summary(folder, done, engine="distributed", started=started, scheduler=address,
                              workers=workers if not scheduler else None, complete=len(done) == len(outcomes))
    return BatchSummary([o for o in outcomes if o is not None])


def _run_tasks(
    plan: BatchPlan, config: PredictConfig, todo: list[int], outcomes: list[SlideOutcome | None], *,
    workers: int, scheduler: str | None, overwrite: bool, warn: Callable[[str], None] | None,
    report: Callable[[SlideOutcome], None] | None, slides_progress: Callable[[int, int], None] | None,
    batch: str, as_completed: Any,
) -> str:
    with _client(workers, scheduler, config) as (client, task_config, resources, address):
        attempts: dict[Any, tuple[int, int]] = {}

        def submit(i: int, attempt: int) -> Any:
            future = client.submit(run_slide, plan.jobs[i], task_config, overwrite, key=f"qpbridge-slide-{batch}-"
                                   f"{i}-{attempt}", pure=False, resources=resources)
            attempts[future] = (i, attempt)
            return future

        running = as_completed([submit(i, 1) for i in todo])
        finished = 0
        if slides_progress is not None:
            slides_progress(0, len(todo))
        for future in running:
            i, attempt = attempts.pop(future)
            job = plan.jobs[i]
            retry = True
            try:
                outcome = future.result()
            except Exception as exc:  # the task itself could not run (its workers died, ...)
                outcome, retry = _failure(job, exc)
            outcome.attempts = attempt
            if outcome.status == "failed" and attempt < MAX_ATTEMPTS and retry:
                if warn is not None:
                    warn(f"{job.slide}: attempt {attempt} failed ({outcome.error}); running it again")
                running.add(submit(i, attempt + 1))
                continue
            outcomes[i] = outcome
            finished += 1
            if outcome.summary is not None and warn is not None:
                for message in outcome.summary.warnings:
                    warn(f"{job.slide}: {message}")
            if report is not None:
                report(outcome)
            if slides_progress is not None:
                slides_progress(finished, len(todo))
        return address


# ------------------------------------------------------------------------------------------- the run summary
def run_summary(
    outcomes: Sequence[SlideOutcome], *, engine: str, started: float, finished: float | None = None,
    scheduler: str | None = None, workers: int | None = None, complete: bool = True,
) -> dict[str, Any]:
    """What ``qpbridge-run.json`` holds: the run (engine, scheduler, start, wall time, counts) and, per slide, its
    status (done, skipped, failed), seconds, worker address, attempts, features by class, warnings and error."""
    finished = time.time() if finished is None else finished
    counts = {status: sum(1 for o in outcomes if o.status == status) for status in ("done", "skipped", "failed")}
    slides = []
    for outcome in outcomes:
        summary = outcome.summary
        slides.append({
            "slide": str(outcome.job.slide), "output": str(outcome.job.output), "status": outcome.status,
            "seconds": None if outcome.seconds is None else round(outcome.seconds, 3), "worker": outcome.worker,
            "attempts": outcome.attempts,
            "features_written": summary.features_written if summary is not None else None,
            "features_by_class": dict(sorted(summary.features_by_class.items())) if summary is not None else None,
            "nuclei_by_class": dict(sorted(summary.nuclei_by_class.items())) if summary is not None else None,
            "warnings": list(summary.warnings) if summary is not None else [],
            "error": None if outcome.error is None else str(outcome.error),
        })
    return {
        "qpbridge_version": __version__, "engine": engine, "scheduler": scheduler, "workers": workers,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(finished - started, 3), "complete": complete, "counts": counts, "slides": slides,
    }


def write_run_summary(folder: str | os.PathLike[str], outcomes: Sequence[SlideOutcome], **run: Any) -> Path:
    """Write :func:`run_summary` to ``<folder>/qpbridge-run.json`` atomically and return its path.

    >>> import tempfile
    >>> path = write_run_summary(tempfile.mkdtemp(), [], engine="serial", started=0.0, finished=2.5)
    >>> json.loads(path.read_text())["counts"], path.name
    ({'done': 0, 'skipped': 0, 'failed': 0}, 'qpbridge-run.json')
    """
    path = Path(folder) / RUN_SUMMARY_NAME
    atomic_write_text(path, json.dumps(run_summary(outcomes, **run), indent=2) + "\n")
    return path
