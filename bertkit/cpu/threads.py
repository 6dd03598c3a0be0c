"""How many threads, and how they wait: OpenMP settings that hold up on a shared machine.

PyTorch's CPU kernels run on an OpenMP thread pool (the wheels bundle GNU libgomp; some builds use
Intel's libiomp5 or LLVM's libomp). Its defaults go wrong on shared machines:

- **Counting.** PyTorch sizes the pool from the machine's cores. A container held to a cgroup CPU
  quota (`docker --cpus 2` on a 64-core host) then runs 64 threads on 2 CPUs' worth of time and is
  throttled every period. The pool here is the smaller of the affinity mask (`os.sched_getaffinity`,
  e.g. `taskset`) and the quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`),
  rounded down, at least 1.
- **Neighbours.** Each parallel region splits its work evenly over the pool and ends when the last
  part does. When another process keeps one of our CPUs busy, the part on that CPU waits for a time
  slice, and threads that spin while they wait give the neighbour even more reason to be scheduled
  first: with one busy neighbour on two cores an embedding call became 1.8-2.1x slower (p99 6-7.5x)
  and a training step 2.9x.
  So the count follows the machine: while the model is in use, a daemon thread reads /proc/stat
  every 0.2 s to see how much of our CPUs other processes used, and `fit_threads()`, called by the
  model at each forward pass, runs on the CPUs they left free (rounded, at least 1, at most the
  budget above).
- **Waiting.** Between regions idle threads spin for a while before they sleep (libgomp: 300,000
  spins, a few ms). `GOMP_SPINCOUNT=10000` / `KMP_BLOCKTIME=1` (about 0.1-1 ms) keeps the quick
  hand-over between the many small regions of a forward pass, and idle threads sleep soon after.
  `OMP_WAIT_POLICY=PASSIVE` (sleep at once) costs 12-49% on a quiet machine; the measurements that
  chose these settings are in docs/benchmarks.md, "Sharing" (`benchmarks/bench_sharing.py`).

The runtime reads its variables once, when its library is loaded (libgomp at `import torch`), so
`configure_threads()` runs at `import bertkit`, which does not import torch: the `bertkit` command,
`bertkit serve` and every Python entry point get it. What the user has set wins: `OMP_NUM_THREADS`
(or `MKL_NUM_THREADS`) fixes the count (no following the machine), any of `OMP_WAIT_POLICY`, `GOMP_SPINCOUNT`,
`KMP_BLOCKTIME` fixes the waiting, `torch.set_num_threads` (or a command's `--threads`) after
import stops the following, and `BERTKIT_THREADS=default` leaves everything to the runtime. When
torch was imported before bertkit, only the count can still change; `describe()` says so, and
`bertkit info` prints it.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# The variables a user may set to override each choice (any one of them set = the user decides).
COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch sizes its pool from either
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# idle threads spin about 0.1 ms (libgomp: spins) / 1 ms (Intel's and LLVM's runtimes) before they sleep
WAIT_SETTINGS = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}
SAMPLE_SECONDS = 0.2  # how often the machine is measured while the model is in use
IDLE_SECONDS = 60.0  # no model call for this long: stop measuring (a neighbour seen while idle still counts)

CGROUP_ROOT = Path("/sys/fs/cgroup")
SET_MARKER = "BERTKIT_SET_THREAD_VARIABLES"  # what bertkit put in the environment, for child processes to tell


@dataclass
class ThreadSettings:
    """What `configure_threads` saw and did."""

    threads: int
    affinity: int
    quota: float | None  # CPUs' worth of time the cgroup allows, None if unlimited
    set_variables: dict[str, str] = field(default_factory=dict)  # what bertkit put in the environment
    user_variables: dict[str, str] = field(default_factory=dict)  # what the user had set, left as is
    notes: list[str] = field(default_factory=list)


_settings: ThreadSettings | None = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def quota_from_cpu_max(text: str | None) -> float | None:
    """cgroup v2 `cpu.max`: "QUOTA PERIOD" in microseconds, QUOTA "max" when unlimited."""
    if not text:
        return None
    parts = text.split()
    if parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def quota_from_cfs(quota_text: str | None, period_text: str | None) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` (-1 when unlimited) and `cpu.cfs_period_us`."""
    try:
        quota, period = int(quota_text or "-1"), int(period_text or "100000")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The directories to read a quota from: the process's own cgroup and every parent up to the
    root (a quota set on a parent also binds), for v2 and for v1's cpu controller."""
    text = _read(proc_cgroup) or ""
    dirs = []
    for line in text.splitlines():
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            base = root
        elif "cpu" in controllers.split(","):
            base = next((root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / name).is_dir()), root / "cpu")
        else:
            continue
        here = base / path.lstrip("/")
        while True:
            dirs.append(here)
            if here == base:
                break
            here = here.parent
    return dirs or [root, root / "cpu"]


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota on this process's cgroups, in CPUs (1.5 = one and a half), or None."""
    quotas = []
    for d in _own_cgroup_dirs(root, proc_cgroup):
        q = quota_from_cpu_max(_read(d / "cpu.max"))
        if q is None:
            q = quota_from_cfs(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us"))
        if q is not None:
            quotas.append(q)
    return min(quotas) if quotas else None


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def thread_budget(affinity: int, quota: float | None) -> int:
    """Threads worth running: the CPUs we may run on, cut to the quota (rounded down: a thread over
    the quota gets the whole pool throttled at the end of each period), never below 1."""
    budget = affinity if quota is None else min(affinity, math.floor(quota))
    return max(1, budget)


def configure_threads(environ=None, quota: float | None | str = "read", affinity: int | None = None) -> ThreadSettings:
    """Put the thread count and wait policy into the environment before the OpenMP runtime loads.

    Idempotent: the first call decides, later calls return the same settings. Arguments other than
    `environ` are for tests (a quota or affinity in place of the machine's)."""
    global _settings
    if _settings is not None and environ is None:
        return _settings
    env = os.environ if environ is None else environ
    affinity = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpu_quota() if quota == "read" else quota
    settings = ThreadSettings(threads=thread_budget(affinity, quota), affinity=affinity, quota=quota)
    # Variables a parent bertkit process set (and a child inherited) are not the user's choice
    for item in env.get(SET_MARKER, "").split(","):
        name, _, value = item.partition("=")
        if name and env.get(name) == value:
            del env[name]
    env.pop(SET_MARKER, None)
    if env.get("BERTKIT_THREADS", "").lower() == "default":
        settings.notes.append("BERTKIT_THREADS=default: the runtime's own defaults")
        settings.threads = 0
    else:
        settings.user_variables = {k: env[k] for k in COUNT_VARIABLES + WAIT_VARIABLES if k in env}
        if not any(k in env for k in COUNT_VARIABLES):
            env["OMP_NUM_THREADS"] = settings.set_variables["OMP_NUM_THREADS"] = str(settings.threads)
        if not any(k in env for k in WAIT_VARIABLES):
            for k, v in WAIT_SETTINGS.items():
                env[k] = settings.set_variables[k] = v
        if settings.set_variables:
            env[SET_MARKER] = ",".join(f"{k}={v}" for k, v in settings.set_variables.items())
        if environ is None and "torch" in sys.modules:
            _adjust_loaded_torch(settings, env)
    if environ is None:
        _settings = settings
        if "OMP_NUM_THREADS" in settings.set_variables and sys.platform.startswith("linux"):
            _follower.start(settings.threads)
    return settings


def _adjust_loaded_torch(settings: ThreadSettings, env) -> None:
    """torch came first: its runtime has read the environment already. The count can still change."""
    torch = sys.modules["torch"]
    if "GOMP_SPINCOUNT" in settings.set_variables:
        settings.notes.append("torch was imported before bertkit, so OpenMP kept its own wait policy "
                              "(import bertkit first, or set GOMP_SPINCOUNT / KMP_BLOCKTIME)")
    if "OMP_NUM_THREADS" in settings.set_variables and torch.get_num_threads() > settings.threads:
        torch.set_num_threads(settings.threads)
        settings.notes.append(f"torch was imported before bertkit: its thread count cut to {settings.threads}")


def describe(settings: ThreadSettings | None = None) -> str:
    """One line: what was chosen and why."""
    s = settings or configure_threads()
    seen = f"affinity {s.affinity} CPU{'s' if s.affinity != 1 else ''}, " + (
        f"cgroup quota {s.quota:g} CPUs" if s.quota is not None else "no cgroup CPU quota")
    if s.threads == 0:
        return f"threads: {'; '.join(s.notes)} ({seen})"
    parts = []
    count = next((f"{s.user_variables[k]} ({k} as set)" for k in COUNT_VARIABLES if k in s.user_variables), None)
    parts.append(count or f"{s.threads} ({seen}), fewer while other processes keep these CPUs busy")
    waits = {k: v for k, v in s.user_variables.items() if k in WAIT_VARIABLES}
    if waits:
        parts.append("wait " + ", ".join(f"{k}={v}" for k, v in waits.items()) + " as set")
    else:
        parts.append("wait " + ", ".join(f"{k}={v}" for k, v in WAIT_SETTINGS.items()) +
                     " (idle threads spin briefly, then sleep)")
    if _follower.stopped_by:
        parts.append(f"following the machine stopped: {_follower.stopped_by}")
    return "threads: " + "; ".join(parts + s.notes)


def _read_cpu_busy(cpus: set[int], stat: Path = Path("/proc/stat")) -> float | None:
    """Seconds the CPUs in `cpus` have spent busy since boot (everything but idle and iowait;
    steal counts as busy: another guest had the CPU)."""
    text = _read(stat)
    if text is None:
        return None
    ticks = 0
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        try:
            if int(name[3:]) not in cpus:
                continue
            values = [int(v) for v in fields[:8]]
        except ValueError:
            continue
        values += [0] * (8 - len(values))
        user, nice, system, idle, iowait, irq, softirq, steal = values
        ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def threads_left(cpus: int, others_busy: float, budget: int) -> int:
    """Threads for the CPUs other processes leave us: `cpus` minus their use, rounded, 1..budget."""
    return max(1, min(budget, math.floor(cpus - others_busy + 0.5)))


class _MachineFollower:
    """Sets torch's thread count to the CPUs that other processes leave free.

    A daemon thread measures every SAMPLE_SECONDS while the model is in use (it stops after
    IDLE_SECONDS without a call, and the next call starts it again), so each call sees how busy
    the machine was in the last moment, not over an idle gap. The count drops only after two
    windows in a row found fewer CPUs free (a short burst elsewhere does not halve a call's
    threads) and rises as soon as one window finds them free again. `fit()` applies the count to
    the calling thread (OpenMP's count is per thread)."""

    def __init__(self):
        self.budget = self.target = self.last_set = 0
        self.stopped_by = ""
        self._lock = threading.Lock()
        self._local = threading.local()  # the count this thread was last given
        self._cpus: set[int] = set()
        self._sampler: threading.Thread | None = None
        self._last_call = 0.0
        self._lower_windows = 0  # windows in a row that found fewer CPUs free than the target
        self.concurrent = 0  # model calls running now inside concurrent_model_call()

    def start(self, budget: int) -> None:
        try:
            self._cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return
        if _read_cpu_busy(self._cpus) is None:
            return
        self.budget = self.target = self.last_set = budget

    def fit(self) -> None:
        if not self.budget:
            return
        self._last_call = time.monotonic()
        if self._sampler is None or not self._sampler.is_alive():  # first call, after idling, or in a forked child
            with self._lock:
                if self._sampler is None or not self._sampler.is_alive():
                    self._sampler = threading.Thread(target=self._sample, name="bertkit-cpu-follower", daemon=True)
                    self._sampler.start()
        torch = sys.modules.get("torch")
        if torch is None:
            return
        current = torch.get_num_threads()
        # a thread we have not set yet starts from the process-wide count, the last one we set
        expected = getattr(self._local, "given", self.last_set)
        target = 1 if getattr(self._local, "one_thread", False) else max(1, self.target // max(1, self.concurrent))
        if current != expected and current != target:
            # someone else chose a count (torch.set_num_threads, a command's --threads): theirs wins
            self.budget = 0
            self.stopped_by = f"torch.set_num_threads({current}) was called"
            return
        if current != target:
            torch.set_num_threads(target)
            self.last_set = target
        self._local.given = target

    def _sample(self) -> None:
        last = (time.monotonic(), _read_cpu_busy(self._cpus), time.process_time())
        while self.budget and time.monotonic() - self._last_call < IDLE_SECONDS:
            time.sleep(SAMPLE_SECONDS)
            now, busy, ours = time.monotonic(), _read_cpu_busy(self._cpus), time.process_time()
            if busy is None or last[1] is None:
                return
            others = max(0.0, (busy - last[1]) - (ours - last[2])) / (now - last[0])
            self.observe(threads_left(len(self._cpus), others, self.budget))
            last = (now, busy, ours)
        self.target = self.budget  # idle: the next call starts from the whole budget

    def observe(self, free: int) -> None:
        """One window's count of free CPUs (as threads): lower the target after two such windows
        in a row, raise it after one."""
        if free < self.target:
            self._lower_windows += 1
            if self._lower_windows >= 2:
                self.target, self._lower_windows = free, 0
        else:
            self.target, self._lower_windows = free, 0


_follower = _MachineFollower()
if hasattr(os, "register_at_fork"):  # a forked child (a data-loader worker) starts with a fresh lock and no sampler
    os.register_at_fork(after_in_child=lambda: _follower.__dict__.update(
        _lock=threading.Lock(), _sampler=None, concurrent=0))


def follows_machine() -> bool:
    """Whether bertkit chooses the thread count (False: the user or the runtime does)."""
    return bool(_follower.budget)


@contextmanager
def concurrent_model_call(one_thread: bool = False):
    """Around a model call that may run beside others (serve's batch workers): while k such calls
    run, each one started gets 1/k of the threads, so k passes share the CPUs instead of each
    spreading over all of them. `one_thread`: this call runs on its own thread alone. OpenMP keeps
    a pool of threads for every thread that ever ran a region on several, and with more pooled
    threads than CPUs GNU OpenMP stops spinning between regions (a lone sentence then takes about
    2x as long), so helpers beside one main caller should never spread."""
    local = _follower._local
    with _follower._lock:
        _follower.concurrent += 1
    local.one_thread = one_thread
    try:
        yield
    finally:
        local.one_thread = False
        with _follower._lock:
            _follower.concurrent -= 1


def fit_threads() -> None:
    """Give the calling thread as many OpenMP threads as the CPUs other processes leave free (see
    the module docstring). Cheap: a clock read and torch.get_num_threads()."""
    _follower.fit()
