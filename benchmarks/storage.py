"""Store throughput: add (copy + sha256 + fsync) and verify next to `sha256sum`; MPI staging at 2-4 ranks.

    python benchmarks/storage.py [--gib 1] [--ranks 2 3 4] [--chunk-mib 32] [--dir /tmp]

Makes one GGUF file of --gib GiB (a single F32 tensor, so the store accepts it;
the engine could not run it), then times on the same file:
  sha256sum FILE             coreutils, the reference
  hash_file                  our streaming hashlib reader (4 MiB reads)
  store add                  Store.add_file: copy into a temp blob while hashing, fsync, rename
  store verify               re-hash the blob
  stage -n N                 mpiexec the stage job with --one-node-per-rank: rank 0 broadcasts,
                             every rank writes its own store (N copies on one disk)
Each step runs once (the file is page-cached after the first read, so the
later steps measure CPU + write bandwidth, not the disk's read speed).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_gguf(path, gib: float) -> int:
    import gguf
    n = int(gib * (1 << 30)) // 4
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor_info("blob.weight", (n,), np.dtype(np.float32), n * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.fout[0].write(b"\0" * (-w.fout[0].tell() % 32))      # tensor data starts aligned (general.alignment)
    chunk = np.arange(1 << 22, dtype=np.float32)            # 16 MiB, written n*4/16MiB times
    left = n
    while left:
        k = min(left, chunk.size)
        w.fout[0].write(chunk[:k].tobytes())           # streamed: never the whole tensor in RAM
        left -= k
    w.close()
    return os.path.getsize(path)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--ranks", type=int, nargs="*", default=[2, 3, 4])
    ap.add_argument("--chunk-mib", type=int, default=32)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args(argv)
    from llcuda_mpi.storage import Store
    from llcuda_mpi.storage.files import hash_file

    work = tempfile.mkdtemp(prefix="llcuda-store-bench-", dir=args.dir)
    try:
        src = os.path.join(work, "big.gguf")
        dt, size = timed(lambda: make_gguf(src, args.gib))
        gb = size / 1e9
        os.sync()                                            # flush the new file: timings below start clean
        print(f"file: {size} bytes ({size / (1 << 30):.2f} GiB), written in {dt:.1f} s")
        rows = []
        dt, out = timed(lambda: subprocess.run(["sha256sum", src], capture_output=True, text=True, check=True))
        ref = out.stdout.split()[0]
        rows.append(("sha256sum (coreutils)", dt))
        dt, (got, _) = timed(lambda: hash_file(src))
        assert got == ref
        rows.append(("hash_file (hashlib, 4 MiB reads)", dt))
        store = Store(os.path.join(work, "store"))
        dt, m = timed(lambda: store.add_file(src, "big"))
        assert m["blobs"][0]["digest"] == "sha256:" + ref
        rows.append(("store add (copy + hash + fsync)", dt))
        dt, problem = timed(lambda: store.verify_blob("sha256:" + ref))
        assert problem is None
        rows.append(("store verify (re-hash blob)", dt))
        for name, dt in rows:
            print(f"{name:<40} {dt:7.2f} s  {gb / dt:6.2f} GB/s")
        shutil.rmtree(store.root)
        for n in args.ranks:
            root = os.path.join(work, f"stage{n}", "n{node}")
            cmd = ["timeout", "600", "mpiexec", "-n", str(n), sys.executable, "-m", "llcuda_mpi.jobs.stage", src,
                   "--store", root, "--one-node-per-rank", "--sha256", ref, "--chunk-mib", str(args.chunk_mib)]
            dt, p = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
            if p.returncode:
                print(p.stdout, p.stderr, file=sys.stderr)
                return 1
            secs = [float(line.split()[4]) for line in p.stdout.splitlines() if " write " in line]
            print(f"stage -n {n}: {n} copies, slowest writer {max(secs):.2f} s = {gb / max(secs):.2f} GB/s per "
                  f"node, {n * gb / max(secs):.2f} GB/s written in all; job wall {dt:.2f} s (incl. MPI start)")
            shutil.rmtree(os.path.join(work, f"stage{n}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
