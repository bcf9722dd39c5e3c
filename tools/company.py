"""Speed in company: seconds per epoch of default runs of homework7.py alone, beside a busy process, and two at
once, each case repeated; the table of tools/RESULTS.md's "Several at once".

Usage:
  python -m tools.company                                   every case, 3 repeats
  python -m tools.company --cases "gan + gan" --env OMP_WAIT_POLICY=PASSIVE
  python -m tools.company --script old/homework7.py         another version of the script, for a before/after
"""
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import homework7 as hw
from tools import add_number_flag
from tools.outputs import read_json

# Each case: the runs started together, each a model or "busy" (a pure-Python loop at nice 19, another user's job).
# A "1 thread" run has OMP_NUM_THREADS=1: the reference of the rule "in company, within 1.5x of one thread alone".
CASES = {
    "vae alone": ["vae"], "gan alone": ["gan"],
    "vae alone, 1 thread": ["vae 1 thread"], "gan alone, 1 thread": ["gan 1 thread"],
    "vae + busy": ["vae", "busy"], "gan + busy": ["gan", "busy"],
    "vae + vae": ["vae", "vae"], "gan + gan": ["gan", "gan"], "vae + gan": ["vae", "gan"],
}
N_TRAIN = {"vae": 60000, "gan": 30000}  # the GAN on half of MNIST, so that its epochs last about as long
PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None  # looked up here: a child only calls it


def start_run(role, script, work_dir, env):
    """Starts one process of the case, in a session of its own as if from a terminal of its own (where Linux
    groups each session's processes, a nice value then counts only within its group): a training run of a model
    (its default flags but the data size, and no mixture to fit) writing into work_dir, or the busy loop. Each
    ends when this process ends, however it ends (ended_with_parent)."""
    if role == "busy":
        return subprocess.Popen([sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL,
                                preexec_fn=lambda: ended_with_parent() or os.nice(19), start_new_session=True)
    model, one_thread = role.split()[0], role.endswith("1 thread")
    argv = [sys.executable, str(script), model, "--epochs", "100000", "--n-train", str(N_TRAIN[model]),
            "--run-dir", str(work_dir), "--figures-dir", str(work_dir)]
    argv += ["--mixture-components", "0"] if model == "vae" else []
    return subprocess.Popen(argv, env={**env, **({"OMP_NUM_THREADS": "1"} if one_thread else {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=ended_with_parent)


def ended_with_parent():
    """In a child, before it runs: the kernel sends it SIGKILL when its parent ends, however the parent ends (a
    second Ctrl-C, SIGKILL), so that no run is left training (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    if PRCTL:
        PRCTL(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def recorded_seconds(run_dir):
    """The seconds of each epoch finished so far in run_dir's metrics.json (none before the first); one line
    where it is not one that homework7.py writes (a --script of another kind)."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return []
    records = read_json(path)
    try:
        return [float(record["seconds"]) for record in records]
    except (TypeError, KeyError, ValueError):
        raise hw.UsageError(f"{path}: not the metrics.json of a homework7.py run (no seconds per epoch)") from None


def run_case(roles, script, epochs, env, tmp, stop):
    """Runs the case's processes together until each training run has finished `epochs` epochs (or stop records a
    signal), then ends them all: the median seconds of each run's epochs after the first (the first holds the
    start-up)."""
    dirs = [Path(tmp) / f"run{i}" for i in range(len(roles))]
    processes = [start_run(role, script, d, env) for role, d in zip(roles, dirs)]
    trained = [(p, d) for role, p, d in zip(roles, processes, dirs) if role != "busy"]
    try:
        while any(len(recorded_seconds(d)) < epochs for _, d in trained):
            stop.check()
            for p, _ in trained:
                if p.poll() is not None:
                    raise hw.UsageError(f"a run ended early: {p.stderr.read().strip().splitlines()[-1:]}")
            time.sleep(0.2)
    finally:
        for p in processes:
            p.send_signal(signal.SIGKILL if p.args[1] == "-c" else signal.SIGTERM)
        for p in processes:
            p.wait()
    return [median(recorded_seconds(d)[1:epochs]) for _, d in trained]


def company(cases, repeats, epochs, script, env_overrides, stop):
    # the runs set their own OpenMP defaults, as they would from a shell: those that importing homework7 set here go
    env = {k: v for k, v in os.environ.items() if hw.SHORT_SPIN.get(k) != v} | env_overrides
    print(f"company: {script}, {repeats} repeats of each case, the median epoch of epochs 2-{epochs} of each run; "
          f"VAE on {N_TRAIN['vae']:,} images, GAN on {N_TRAIN['gan']:,}; "
          f"env {' '.join(f'{k}={v}' for k, v in env_overrides.items()) or '(as given)'}", flush=True)
    print("| case | run | seconds per epoch, mean | min | max |\n|---|---|---:|---:|---:|", flush=True)
    for case in cases:
        roles = [r for r in CASES[case] if r != "busy"]
        seconds = [[] for _ in roles]
        for _ in range(repeats):  # one case at a time: each repeat is a fresh set of processes
            with tempfile.TemporaryDirectory() as tmp:
                for i, s in enumerate(run_case(CASES[case], script, epochs, env, tmp, stop)):
                    seconds[i].append(s)
        for role, values in zip(roles, seconds):
            print(f"| {case} | {role.split()[0]} | {sum(values) / len(values):.2f} | {min(values):.2f} | "
                  f"{max(values):.2f} |", flush=True)
    return 0


def env_setting(text):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(text)
    return name, value


def build_parser():
    parser = hw.Parser(prog="python -m tools.company", description=__doc__,
                       epilog="Run it alone on the machine: anything else running is company too.")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE",
                        help=f"which cases (default: all: {'; '.join(CASES)})")
    add_number_flag(parser, "--repeats", int, "[1, 100]", 3, "runs of each case")
    add_number_flag(parser, "--epochs", int, "[2, 1000]", 4, "epochs each run trains before all stop; the first "
                    "is not counted")
    parser.add_argument("--script", default=str(Path(hw.__file__).resolve()),
                        help="the homework7.py to run (default: this one); another keeps its data/ beside it")
    parser.add_argument("--env", type=env_setting, nargs="+", default=[], metavar="NAME=VALUE",
                        help="environment variables for every run (default: none beyond this shell's)")
    return parser


def main(argv=None):
    return hw.run_cli(build_parser(), argv, lambda args, stop: company(args.cases, args.repeats, args.epochs,
                                                                       args.script, dict(args.env), stop))


if __name__ == "__main__":
    sys.exit(main())
