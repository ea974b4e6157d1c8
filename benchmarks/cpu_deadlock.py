"""A minimal reproducer, outside vqjax, of the deadlocked gradient all-reduce between XLA:CPU devices.

    python benchmarks/cpu_deadlock.py                      # 2 devices, 50 steps dispatched ahead: deadlocks
    python benchmarks/cpu_deadlock.py --sync-every 1       # ... blocking on every step: runs
    python benchmarks/cpu_deadlock.py --pjrt-threads 4     # ... with a 4-thread PjRt pool (PJRT_NPROC=4): runs
    python benchmarks/cpu_deadlock.py --eigen on           # XLA's multi-threaded Eigen: deadlocks all the same
    python benchmarks/cpu_deadlock.py --setup 2dev-gloo    # gloo instead of in-process collectives: deadlocks
    python benchmarks/cpu_deadlock.py --setup 2proc        # 2 processes x 1 device on loopback, gloo: runs
    python benchmarks/cpu_deadlock.py --setup 1dev         # 1 device, XLA's threads, no collective: runs
    python benchmarks/cpu_deadlock.py --load 1             # any of these while another process loads a core
    python benchmarks/cpu_deadlock.py --timeout 20 --stall 10 --kill-on-stall   # quicker verdicts

Uses only jax and numpy: a jitted data-parallel step (a small conv net shaped like the VQ-VAE's, its
loss, gradient and an SGD update, parameters donated) on a 1-D ``("data",)`` mesh; with two devices the
gradient mean is one all-reduce (an XLA:CPU collective). The worker dispatches steps and blocks on the
result every ``--sync-every`` steps, as a training loop does at its log lines; a watcher thread polls each
step's result (``is_ready``) and reports when it ends. The parent calls the run *stalled* when no step
ends for ``--stall`` seconds, then prints what the threads are doing: the native stacks (``gdb -batch -ex
"thread apply all bt"``, else ``py-spy dump --native``), summarised to the XLA frames, and the Python
frames (``faulthandler``, in the worker's stderr). Unless ``--kill-on-stall``, it then waits for XLA's
collective abort (``--timeout`` seconds; 40 s by default). The last line is a JSON summary.

What it shows (jax/jaxlib 0.10.2, 2 cores; see docs/cpu-devices.md): the PjRt CPU client runs each
device's computation on a pool of max(cores, devices) = 2 threads and lets at most 32 computations per
device be in flight (``max_inflight_computations_per_device``). With 32 in flight, the launch of the next
step blocks a pool thread on that limit (``xla::Semaphore::Acquire``) while the other pool thread runs one
device's step, whose all-reduce waits forever for the other device's step: it needs a pool thread, and
there is none. Any loop that dispatches ~32 steps ahead of 2 single-device-per-core devices deadlocks.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ABORT_MARKS = ("Termination timeout", "rendezvous", "Gloo", "gloo")  # XLA's collective abort / gloo's errors
SETUPS = {
    "2dev": "2 devices in 1 process (jax_num_cpu_devices=2), in-process collectives",
    "2dev-gloo": "2 devices in 1 process, jax.distributed (1 process) on loopback, gloo collectives",
    "1dev": "1 device, XLA's default threading (no collective)",
    "2proc": "2 processes x 1 device, jax.distributed on loopback, gloo collectives",
}


# --------------------------------------------------------------------------- the worker


def _xla_flags(args) -> str:
    flags = [os.environ.get("XLA_FLAGS", "")]
    if args.eigen != "default":
        flags.append(f"--xla_cpu_multi_thread_eigen={'true' if args.eigen == 'on' else 'false'}")
    if args.timeout:  # the in-process rendezvous aborts after ..._terminate_timeout_seconds (40 s by default)
        flags += [f"--xla_cpu_collective_timeout_seconds={args.timeout}",
                  f"--xla_cpu_collective_call_terminate_timeout_seconds={args.timeout}",
                  f"--xla_cpu_collective_call_warn_stuck_timeout_seconds={max(1, min(20, args.timeout // 2))}"]
    flags.extend(args.xla_flag)
    return " ".join(f for f in flags if f).strip()


def worker(args) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(120, file=sys.stderr)  # Python frames if start-up hangs
    os.environ["XLA_FLAGS"] = _xla_flags(args)
    if args.pjrt_threads:  # XLA's DefaultThreadPoolSize(): the PjRt client pool and the intra-op pool
        os.environ["PJRT_NPROC"] = str(args.pjrt_threads)
    import jax
    import jax.numpy as jnp
    import numpy as np

    if args.setup == "2proc":
        jax.config.update("jax_cpu_collectives_implementation", args.collectives or "gloo")
        jax.config.update("jax_num_cpu_devices", 1)
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.processes,
                                   process_id=args.process_id, coordinator_bind_address=f"127.0.0.1:{args.port}")
    elif args.setup == "2dev-gloo":
        jax.config.update("jax_cpu_collectives_implementation", args.collectives or "gloo")
        jax.config.update("jax_num_cpu_devices", args.devices)
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=1, process_id=0,
                                   coordinator_bind_address=f"127.0.0.1:{args.port}")
    elif args.setup == "2dev":
        jax.config.update("jax_num_cpu_devices", args.devices)
        if args.collectives:
            jax.config.update("jax_cpu_collectives_implementation", args.collectives)
    else:
        jax.config.update("jax_num_cpu_devices", 1)

    if args.no_async_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("data",), (jax.sharding.AxisType.Auto,), devices=devices)
    rep, data = jax.NamedSharding(mesh, jax.P()), jax.NamedSharding(mesh, jax.P("data"))

    h = args.hidden
    rng = np.random.default_rng(0)

    def conv_w(cin, cout, k):
        return (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)

    # encoder 28->14->7, two 3x3 convs at 7x7, decoder 7->14->28 (the shape of the VQ-VAE's conv net)
    params = {"e1": conv_w(1, h // 2, 4), "e2": conv_w(h // 2, h, 4), "r1": conv_w(h, h, 3), "r2": conv_w(h, h, 3),
              "d1": conv_w(h, h // 2, 4), "d2": conv_w(h // 2, 1, 4), "mix": (np.eye(h) * 0.5).astype(np.float32)}
    params = jax.device_put(params, rep)
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(x, w, stride):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=dn)

    def deconv(x, w):
        return jax.lax.conv_transpose(x, w, (2, 2), "SAME", dimension_numbers=dn)

    def loss_fn(p, x):
        z = jax.nn.relu(conv(x, p["e1"], 2))
        z = jax.nn.relu(conv(z, p["e2"], 2))
        z = z + conv(jax.nn.relu(conv(z, p["r1"], 1)), p["r2"], 1)
        z = z @ p["mix"]  # a matrix multiply (Eigen) next to the convolutions
        y = jax.nn.relu(deconv(z, p["d1"]))
        y = deconv(y, p["d2"])
        return jnp.mean((y - x) ** 2)

    def step(p, x):
        loss, g = jax.value_and_grad(loss_fn)(p, x)  # x sharded over "data": g is all-reduced
        return jax.tree.map(lambda a, b: a - 0.01 * b, p, g), loss

    step = jax.jit(step, donate_argnums=0)
    local = args.batch // jax.process_count()
    x_host = rng.random((local, 28, 28, 1), dtype=np.float32)

    def batch():
        return jax.make_array_from_process_local_data(data, x_host)

    params, loss = step(params, batch())  # compile
    jax.block_until_ready(loss)
    print(json.dumps({"ready": True, "devices": jax.local_device_count(), "process": jax.process_index(),
                      "pid": os.getpid(), "xla_flags": os.environ["XLA_FLAGS"]}), flush=True)
    t_all = time.perf_counter()
    # The main thread dispatches steps and blocks every --sync-every steps (as a training loop does at its log
    # lines); a watcher thread polls each dispatched step's loss (`is_ready`, which does not block) and prints
    # "<step> <seconds since the previous step ended>" when it is done, so a stall shows even between syncs.
    pending: collections.deque = collections.deque()

    def watch():
        t = time.perf_counter()
        while True:
            while not pending:
                time.sleep(0.002)
            i, out = pending[0]
            if out is None:
                return
            while not out.is_ready():
                time.sleep(0.002)
            pending.popleft()
            now = time.perf_counter()
            print(f"STEP {i} {now - t:.5f}", flush=True)
            faulthandler.dump_traceback_later(args.stall, file=sys.stderr)  # re-armed at every finished step
            t = now

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for i in range(1, args.steps + 1):
        params, loss = step(params, batch())  # dispatched: runs ahead of the devices until the next sync
        pending.append((i, loss))
        if i % args.sync_every == 0 or i == args.steps:
            jax.block_until_ready(loss)
    pending.append((0, None))
    watcher.join()
    seconds = time.perf_counter() - t_all
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps({"done": True, "seconds": seconds, "loss": float(np.asarray(loss.addressable_data(0)))}),
          flush=True)
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


# --------------------------------------------------------------------------- the competing load


def load(seconds: float) -> None:
    """One process that keeps a core busy: a NumPy matrix-multiply loop on one thread."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.random((256, 256)), rng.random((256, 256))
    end = time.time() + seconds
    while time.time() < end:
        a = a @ b
        a /= np.abs(a).max()


def start_load(n: int, seconds: float) -> list[subprocess.Popen]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--load-worker", str(seconds)], env=env)
            for _ in range(n)]


# --------------------------------------------------------------------------- native stacks


def native_stacks(pid: int) -> str:
    """Every thread's native backtrace of process ``pid`` (gdb, else py-spy), or why there is none."""
    if shutil.which("gdb"):
        cmd = ["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "set pagination off", "-ex", "thread apply all bt"]
    elif shutil.which("py-spy"):
        cmd = ["py-spy", "dump", "--native", "--pid", str(pid)]
    else:
        return "(neither gdb nor py-spy is installed)"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return f"({cmd[0]} timed out)"
    return proc.stdout + (proc.stderr if proc.returncode else "")


def _frame_name(line: str) -> str:
    """``#4  0x... in xla::Foo::Bar(int, ...) () from lib.so`` -> ``xla::Foo::Bar`` (no arguments, no templates)."""
    name = line.split(" in ", 1)[1] if " in " in line else line.split(None, 1)[-1]
    out, depth = [], 0
    for ch in name:  # drop <...> template arguments
        depth += ch == "<"
        if not depth:
            out.append(ch)
        depth -= ch == ">" and depth > 0
    name = "".join(out).replace("(anonymous namespace)", "(anon)")
    return name.replace("(anon)", "{anon}").split("(", 1)[0].strip()


KEY_FRAMES = ("xla::", "tsl::BlockUntilReady", "jax::", "Eigen::ThreadPoolTempl::WorkerLoop", "PjitFunction")
BUSY_FRAMES = ("Execute", "AllReduce", "Semaphore", "BlockUntilReady", "PjitFunction", "Kernel::Launch")


def summarize_stacks(text: str) -> str:
    """gdb's ``thread apply all bt``, short: per thread executing, launching or waiting for a computation, its
    XLA/JAX frames innermost first (no addresses, arguments or templates); the other threads are counted."""
    threads, current = [], None
    for line in text.splitlines():
        if line.startswith("Thread "):
            current = [line.split(" (")[0], []]
            threads.append(current)
        elif line.startswith("#") and current is not None:
            current[1].append(_frame_name(line))
    out, idle = [], 0
    for head, frames in threads:
        if not any(b in f for f in frames for b in BUSY_FRAMES):
            idle += 1
            continue
        key = [f for f in frames if f.startswith(KEY_FRAMES) and "internal_any_invocable" not in f]
        key = [f for i, f in enumerate(key) if i == 0 or f != key[i - 1]]
        out.append(f"{head}: " + " <- ".join(key[:9] or frames[:6]))
    out.append(f"(+ {idle} other threads: idle pool workers, LLVM, OpenBLAS, gRPC/coordination, faulthandler, ...)")
    return "\n".join(out)


# --------------------------------------------------------------------------- the monitor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def monitor(args) -> dict:
    n_proc = args.processes if args.setup == "2proc" else 1
    port = _free_port()
    base = [sys.executable, os.path.abspath(__file__), "--worker", "--setup", args.setup, "--steps", str(args.steps),
            "--batch", str(args.batch), "--sync-every", str(args.sync_every), "--hidden", str(args.hidden),
            "--eigen", args.eigen, "--stall", str(args.stall), "--timeout", str(args.timeout),
            "--devices", str(args.devices), "--processes", str(n_proc), "--port", str(port)]
    if args.collectives:
        base += ["--collectives", args.collectives]
    if args.no_async_dispatch:
        base += ["--no-async-dispatch"]
    if args.pjrt_threads:
        base += ["--pjrt-threads", str(args.pjrt_threads)]
    for f in args.xla_flag:
        base += [f"--xla-flag={f}"]
    stderr_dir = tempfile.mkdtemp(prefix="cpu_deadlock-")
    procs, errs = [], []
    for i in range(n_proc):
        err = open(os.path.join(stderr_dir, f"worker{i}.stderr"), "w+")
        procs.append(subprocess.Popen(base + ["--process-id", str(i)], stdout=subprocess.PIPE, stderr=err, text=True,
                                      bufsize=1))
        errs.append(err)
    state = {"last": time.monotonic(), "steps": [0] * n_proc, "times": [[] for _ in range(n_proc)],
             "ready": [False] * n_proc, "done": [None] * n_proc, "pids": [p.pid for p in procs]}
    lock = threading.Lock()

    def reader(i, proc):
        for line in proc.stdout:
            line = line.strip()
            with lock:
                state["last"] = time.monotonic()
                if line.startswith(('{"ready"', '{"done"')):
                    msg = json.loads(line)
                    if msg.get("ready"):
                        state["ready"][i] = True
                        state["xla_flags"] = msg["xla_flags"]
                        state["devices"] = msg["devices"]
                    if msg.get("done"):
                        state["done"][i] = msg
                elif line.startswith("STEP "):
                    _, done, seconds = line.split()
                    state["times"][i].append(float(seconds))
                    state["steps"][i] = int(done)

    threads = [threading.Thread(target=reader, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    loaders = []
    stalls = []
    started = time.monotonic()
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
            with lock:
                ready = all(state["ready"])
                idle = time.monotonic() - state["last"]
                steps = list(state["steps"])
            if ready and not loaders and args.load:
                loaders = start_load(args.load, args.max_seconds)
            if time.monotonic() - started > args.max_seconds:
                print(f"max time {args.max_seconds} s reached: stopping", flush=True)
                break
            if ready and idle > args.stall and (not stalls or stalls[-1]["steps"] != steps):
                stall = {"steps": steps, "after_s": round(time.monotonic() - started, 1)}
                print(f"\nSTALL: no step has ended for {idle:.0f} s (steps done per process: {steps})", flush=True)
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        text = native_stacks(p.pid)
                        path = os.path.join(stderr_dir, f"worker{i}.stacks.txt")
                        with open(path, "w") as f:
                            f.write(text)
                        stall.setdefault("stacks", []).append(path)
                        print(f"--- native stacks of worker {i} (pid {p.pid}), full text in {path}:")
                        print(summarize_stacks(text), flush=True)
                stalls.append(stall)
                if args.kill_on_stall:
                    break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs + loaders:
            if p.poll() is None:
                p.terminate()
            p.wait()
        for t in threads:
            t.join(timeout=5)
    codes = [p.returncode for p in procs]
    stderr_tail = []
    for err in errs:
        err.flush()
        err.seek(0)
        text = err.read()
        err.close()
        stderr_tail.append("\n".join(text.strip().splitlines()[-40:]))
    aborted = [c != 0 and any(m in t for m in ABORT_MARKS) for t, c in zip(stderr_tail, codes)]
    stuck_warning = any("may be stuck" in t for t in stderr_tail)  # XLA's rendezvous warning
    times = [t for ts in state["times"] for t in ts]
    done = [d for d in state["done"] if d]
    result = {
        "setup": args.setup, "description": SETUPS[args.setup], "eigen": args.eigen, "collectives": args.collectives,
        "async_dispatch": not args.no_async_dispatch, "sync_every": args.sync_every, "pjrt_threads": args.pjrt_threads,
        "load_processes": args.load, "batch": args.batch, "hidden": args.hidden, "xla_flags": state.get("xla_flags"),
        "devices_per_process": state.get("devices"), "processes": n_proc, "steps_requested": args.steps,
        "steps_done": min(state["steps"]), "exit_codes": codes, "stalls": len(stalls), "stall_details": stalls,
        "collective_abort": any(aborted), "xla_stuck_warning": stuck_warning, "stderr_dir": stderr_dir,
    }
    if times:
        ts = sorted(times)
        result.update(median_step_s=round(ts[len(ts) // 2], 5), max_step_s=round(ts[-1], 3),
                      steps_over_1s=sum(t > 1 for t in times))
    if len(done) == n_proc:
        seconds = max(d["seconds"] for d in done)
        result.update(seconds=round(seconds, 2), images_per_s=round(args.steps * args.batch / seconds, 1))
    if any(c != 0 for c in codes):
        for i, t in enumerate(stderr_tail):
            if codes[i]:
                print(f"--- worker {i} exited with {codes[i]}; the end of its stderr:\n{t}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", choices=list(SETUPS), default="2dev")
    parser.add_argument("--devices", type=int, default=2, help="devices of the 2dev setup")
    parser.add_argument("--processes", type=int, default=2, help="processes of the 2proc setup")
    parser.add_argument("--eigen", choices=["off", "on", "default"], default=None,
                        help="--xla_cpu_multi_thread_eigen (default: off with one device per core, as vqjax sets it; "
                             "XLA's own default with --setup 1dev)")
    parser.add_argument("--collectives", choices=["gloo", "mpi"], default=None,
                        help="jax_cpu_collectives_implementation (default: JAX's choice for the setup)")
    parser.add_argument("--no-async-dispatch", action="store_true",
                        help="jax_cpu_enable_async_dispatch=False: each step's launch waits for the step to finish")
    parser.add_argument("--pjrt-threads", type=int, default=0,
                        help="PJRT_NPROC: threads of XLA's PjRt CPU client pool (default: the usable cores)")
    parser.add_argument("--timeout", type=int, default=0,
                        help="seconds before XLA aborts a stuck collective (--xla_cpu_collective_timeout_seconds and "
                             "--xla_cpu_collective_call_terminate_timeout_seconds; 0: XLA's 40 s)")
    parser.add_argument("--xla-flag", action="append", default=[], help="another XLA flag, e.g. --xla-flag=--xla_...")
    parser.add_argument("--load", type=int, default=0, help="competing load processes (a NumPy matmul loop each)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sync-every", type=int, default=50,
                        help="block on the result every N steps (1: every step; vqjax's loop syncs at each log line, "
                             "so it dispatches up to log_every steps ahead)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--stall", type=float, default=10.0, help="seconds without a finished step = a stall")
    parser.add_argument("--max-seconds", type=float, default=170.0, help="stop the whole run after this long")
    parser.add_argument("--kill-on-stall", action="store_true", help="stop at the first stall (after the stacks)")
    parser.add_argument("--out", default=None, help="also write the JSON summary here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--load-worker", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.eigen is None:
        args.eigen = "default" if args.setup == "1dev" else "off"
    if args.load_worker is not None:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return load(args.load_worker)
    if args.worker:
        return worker(args)
    result = monitor(args)
    print(json.dumps(result), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
