"""bertkit.cpu.threads: the thread count from affinity and cgroup quotas, the user's variables win, the
settings are in place before OpenMP starts, and the count follows the CPUs other processes leave free."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bertkit.cpu import threads
from bertkit.cpu.threads import (cgroup_cpu_quota, configure_threads, describe, quota_from_cfs, quota_from_cpu_max,
                                 thread_budget, threads_left)

ROOT = Path(__file__).resolve().parents[1]
OUR_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
                 "BERTKIT_THREADS", "OMP_DISPLAY_ENV", threads.SET_MARKER)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def run_python(code, **env):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env=clean_env(**env), timeout=300)
    assert r.returncode == 0, r.stderr
    return r


# ---- quotas ---------------------------------------------------------------------------------
def test_cgroup_files_parse():
    assert quota_from_cpu_max("max 100000") is None
    assert quota_from_cpu_max("150000 100000") == 1.5
    assert quota_from_cpu_max("50000 100000") == 0.5
    assert quota_from_cpu_max("") is None
    assert quota_from_cfs("-1", "100000") is None
    assert quota_from_cfs("200000", "100000") == 2.0
    assert quota_from_cfs("garbage", "100000") is None


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_v2_quota_of_the_process_cgroup_and_its_parents(tmp_path):
    root = tmp_path / "cgroup"
    proc = write(tmp_path / "proc_cgroup", "0::/kubepods/pod1/ctr\n")
    write(root / "cpu.max", "max 100000\n")
    write(root / "kubepods/pod1/ctr/cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root, proc) is None
    write(root / "kubepods/pod1/cpu.max", "250000 100000\n")  # a parent's quota binds the child too
    assert cgroup_cpu_quota(root, proc) == 2.5
    write(root / "kubepods/pod1/ctr/cpu.max", "120000 100000\n")  # the tightest wins
    assert cgroup_cpu_quota(root, proc) == 1.2


def test_v1_quota_from_the_cpu_controller(tmp_path):
    root = tmp_path / "cgroup"
    proc = write(tmp_path / "proc_cgroup", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    (root / "cpu,cpuacct").mkdir(parents=True)
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n")
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root, proc) == 3.0
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_budget_is_the_smaller_of_affinity_and_quota_rounded_down():
    assert thread_budget(8, None) == 8
    assert thread_budget(64, 2.0) == 2
    assert thread_budget(64, 2.9) == 2  # a third thread would be throttled every period
    assert thread_budget(4, 16.0) == 4
    assert thread_budget(8, 0.5) == 1


def test_a_quota_sets_the_count_in_a_fresh_environment():
    env = {}
    s = configure_threads(environ=env, quota=1.5, affinity=8)
    assert env["OMP_NUM_THREADS"] == "1" and s.threads == 1
    assert env["GOMP_SPINCOUNT"] == threads.WAIT_SETTINGS["GOMP_SPINCOUNT"]
    assert "cgroup quota 1.5 CPUs" in describe(s) and "affinity 8 CPUs" in describe(s)


# ---- the user's variables win -----------------------------------------------------------------
def test_the_users_variables_are_never_changed():
    env = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    s = configure_threads(environ=env, quota=None, affinity=8)
    assert env == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    assert s.set_variables == {}
    line = describe(s)
    assert "3 (OMP_NUM_THREADS as set)" in line and "OMP_WAIT_POLICY=PASSIVE as set" in line

    env = {"KMP_BLOCKTIME": "0"}  # one waiting variable is enough: the user decides how threads wait
    configure_threads(environ=env, quota=None, affinity=4)
    assert env["KMP_BLOCKTIME"] == "0" and env["OMP_NUM_THREADS"] == "4" and "GOMP_SPINCOUNT" not in env

    env = {"BERTKIT_THREADS": "default"}
    s = configure_threads(environ=env, quota=2.0, affinity=8)
    assert env == {"BERTKIT_THREADS": "default"} and "runtime's own defaults" in describe(s)


def test_a_child_process_recomputes_what_its_parent_bertkit_set():
    parent = {}
    configure_threads(environ=parent, quota=None, affinity=8)
    child = dict(parent)  # inherited by a subprocess, a torchrun worker
    s = configure_threads(environ=child, quota=None, affinity=2)
    assert child["OMP_NUM_THREADS"] == "2" and s.user_variables == {}
    child = {**parent, "OMP_NUM_THREADS": "5"}  # changed by the user in between: theirs
    s = configure_threads(environ=child, quota=None, affinity=2)
    assert child["OMP_NUM_THREADS"] == "5" and s.user_variables["OMP_NUM_THREADS"] == "5"


def test_the_runtime_defaults_on_request():
    env = {"BERTKIT_THREADS": "default"}
    s = configure_threads(environ=env, quota=2.0, affinity=8)
    assert env == {"BERTKIT_THREADS": "default"} and "runtime's own defaults" in describe(s)


def test_environment_overrides_win_in_a_real_process():
    r = run_python("""
        import bertkit, torch
        print(torch.get_num_threads())
    """, OMP_NUM_THREADS="1")
    assert r.stdout.split() == ["1"]


# ---- in place before the runtime starts ----------------------------------------------------------
def test_settings_are_in_place_before_the_first_parallel_region():
    """GNU OpenMP prints the values it started with (OMP_DISPLAY_ENV): they are bertkit's."""
    r = run_python("""
        import bertkit, torch
        from bertkit.cpu.threads import configure_threads
        torch.ones(2_000_000).sum()
        print(configure_threads().threads, torch.get_num_threads())
    """, OMP_DISPLAY_ENV="VERBOSE")
    budget, torch_threads = map(int, r.stdout.split())
    assert torch_threads == budget
    if "OPENMP DISPLAY ENVIRONMENT" not in r.stderr:
        pytest.skip("this torch's OpenMP runtime does not display its environment (not GNU OpenMP)")
    assert f"OMP_NUM_THREADS = '{budget}'" in r.stderr
    assert f"GOMP_SPINCOUNT = '{threads.WAIT_SETTINGS['GOMP_SPINCOUNT']}'" in r.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs an affinity mask of 2 or more CPUs to reduce")
def test_a_reduced_affinity_mask_gives_fewer_threads():
    r = run_python("""
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # as `taskset -c N` would
        import bertkit, torch
        print(os.environ["OMP_NUM_THREADS"], torch.get_num_threads())
    """)
    assert r.stdout.split() == ["1", "1"]


def test_torch_imported_first_still_gets_the_count_and_a_note():
    r = run_python("""
        import torch
        torch.set_num_threads(64)  # as a 64-core host under a small quota starts
        import bertkit
        from bertkit.cpu import threads
        print(torch.get_num_threads(), threads.configure_threads().threads); print(threads.describe())
    """)
    counts, line = r.stdout.splitlines()
    count, budget = counts.split()
    assert count == budget and "torch was imported before bertkit" in line


# ---- following the machine -----------------------------------------------------------------------
def test_threads_left_for_the_cpus_others_leave_free():
    assert threads_left(2, 0.0, 2) == 2
    assert threads_left(2, 0.3, 2) == 2  # a light neighbour (a client, a shell) is not worth halving for
    assert threads_left(2, 1.0, 2) == 1
    assert threads_left(2, 2.0, 2) == 1  # never below one
    assert threads_left(64, 10.0, 8) == 8  # the quota, not the free CPUs, is the limit


def test_the_count_drops_after_two_busy_windows_and_rises_after_one_free():
    f = threads._MachineFollower()
    f.budget = f.target = 2
    f.observe(1)
    assert f.target == 2  # one busy window: a burst, not a neighbour
    f.observe(1)
    assert f.target == 1
    f.observe(2)
    assert f.target == 2
    f.observe(1)
    f.observe(2)
    f.observe(1)
    assert f.target == 2  # not two in a row


def test_cpu_busy_time_reads_only_our_cpus(tmp_path):
    stat = write(tmp_path / "stat", "cpu  10 0 10 100 0 0 0 0 0 0\n"
                                    "cpu0 100 0 50 1000 7 1 2 3 0 0\n"
                                    "cpu1 400 0 0 0 0 0 0 0 0 0\n"
                                    "intr 1 2 3\n")
    tick = os.sysconf("SC_CLK_TCK")
    assert threads._read_cpu_busy({0}, stat) == pytest.approx((100 + 50 + 1 + 2 + 3) / tick)
    assert threads._read_cpu_busy({0, 1}, stat) == pytest.approx((156 + 400) / tick)


FOLLOW = """
import os, sys, time, subprocess
import bertkit, torch
from bertkit.cpu import threads
threads.SAMPLE_SECONDS = 0.1
model = bertkit.BertModel(bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=100)).eval()
ids = torch.randint(0, 100, (8, 64))
seen = []
neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(len(os.sched_getaffinity(0)))]
try:
    end = time.monotonic() + 4
    while time.monotonic() < end:
        with torch.inference_mode():
            model(ids)
        seen.append(torch.get_num_threads())
finally:
    for p in neighbours:
        p.kill()
print(threads.configure_threads().threads, min(seen), seen[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="reads /proc/stat; needs 2 or more CPUs")
def test_busy_neighbours_on_every_cpu_cut_the_count_to_one():
    budget, fewest, first = map(int, run_python(FOLLOW).stdout.split())
    assert first == budget > 1
    assert fewest == 1


def test_a_count_the_user_sets_stops_the_following():
    r = run_python("""
        import bertkit, torch
        from bertkit.cpu import threads
        model = bertkit.BertModel(bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=100)).eval()
        ids = torch.randint(0, 100, (2, 8))
        model(ids)
        before = threads.follows_machine()
        torch.set_num_threads(1)
        model(ids)
        print(before, threads.follows_machine(), torch.get_num_threads())
        print(threads.describe())
    """)
    first, line = r.stdout.splitlines()
    follows = sys.platform.startswith("linux")
    assert first.split() == [str(follows), "False", "1"]
    if follows:
        assert "torch.set_num_threads(1) was called" in line


def test_concurrent_calls_share_the_threads():
    f = threads._MachineFollower()
    f.budget = f.target = f.last_set = 4
    f._sampler = type("Alive", (), {"is_alive": lambda self: True})()  # no sampling thread in this test
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        f.concurrent = 2
        f.fit()
        assert torch.get_num_threads() == 2
        f._local.one_thread = True
        f.fit()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
