"""The data cache's lock: two processes filling one cache at once make one correct cache, once.

Real processes: two ``python`` children render the same small synthetic cache at the same moment
(both wait for a start file); a lock left by a killed process is taken over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SIZE, CHUNK, PX = 12, 4, 16

RENDER = f"""
import sys, time
from pathlib import Path
from galgen_lightning.data import SyntheticGalaxies

cache, go, out = sys.argv[1:4]
Path(out + ".ready").touch()
while not Path(go).exists():
    time.sleep(0.005)
images = SyntheticGalaxies(size={SIZE}, cache_dir=cache, workers=1, chunk={CHUNK}).load({SIZE}, {PX})
Path(out).write_bytes(images.tobytes())
"""

HOLD = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def _chunks(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("chunk_*.npy"))}


@pytest.mark.slow  # two fresh Python processes importing torch and galsim: 20-90 s on 2 busy cores
def test_two_processes_rendering_one_cache_make_it_once_and_correctly(tmp_path):
    from galgen_lightning.data import SyntheticGalaxies

    shared, go = tmp_path / "shared", tmp_path / "go"
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-c", RENDER, str(shared), str(go), str(tmp_path / f"out{i}.bin")]
        procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 300
    while not all((tmp_path / f"out{i}.bin.ready").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)  # both imported galgen (seconds) and wait for the start file: then they race
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    # the work was done once: each chunk rendered by one process only
    rendered = [line for out, _ in outputs for line in out.splitlines() if line.startswith("galgen: rendering")]
    assert len(rendered) == SIZE // CHUNK, rendered
    # both got the same images, equal to a render by one process alone into another cache
    alone_source = SyntheticGalaxies(size=SIZE, cache_dir=str(tmp_path / "alone"), workers=1, chunk=CHUNK)
    alone = alone_source.load(SIZE, PX)
    for i in range(2):
        got = np.frombuffer((tmp_path / f"out{i}.bin").read_bytes(), dtype=np.float32).reshape(alone.shape)
        assert np.array_equal(got, alone)
    # the cache validates (every chunk sound, nothing left half-written) and its bytes are a lone render's
    folder = SyntheticGalaxies(size=SIZE, cache_dir=str(shared), workers=1, chunk=CHUNK).folder(PX)
    assert _chunks(folder) == _chunks(alone_source.folder(PX)) and len(_chunks(folder)) == SIZE // CHUNK
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]
    from galgen_lightning.data.cache import ChunkCache

    cache = ChunkCache(folder, [(k * CHUNK, (k + 1) * CHUNK) for k in range(SIZE // CHUNK)], PX, suffix=".npy")
    assert all(cache.read(k) is not None for k in range(SIZE // CHUNK))


def test_a_held_lock_makes_a_filler_wait_and_a_dead_holders_lock_is_taken_over(tmp_path, capfd):
    from galgen_lightning.data import SyntheticGalaxies
    from galgen_lightning.data.cache import LOCK

    source = SyntheticGalaxies(size=CHUNK, cache_dir=str(tmp_path), workers=1, chunk=CHUNK)
    folder = source.folder(PX)
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / LOCK)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        import threading

        result: dict = {}
        filler = threading.Thread(target=lambda: result.setdefault("images", source.load(CHUNK, PX)))
        filler.start()
        time.sleep(1.5)
        assert filler.is_alive() and not list(folder.glob("chunk_*"))  # waits for the holder, writes nothing
        holder.send_signal(signal.SIGKILL)  # the holder dies without releasing: the OS frees its lock
        holder.wait(timeout=30)
        filler.join(timeout=120)
        assert not filler.is_alive() and result["images"].shape == (CHUNK, PX, PX)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    err = capfd.readouterr().err
    assert f"galgen: waiting for another process that fills the data cache {folder} (lock {folder / LOCK})" in err
    assert len(_chunks(folder)) == 1


def test_a_complete_cache_is_read_without_taking_the_lock(tmp_path):
    from galgen_lightning.data import SyntheticGalaxies
    from galgen_lightning.data.cache import LOCK

    source = SyntheticGalaxies(size=CHUNK, cache_dir=str(tmp_path), workers=1, chunk=CHUNK)
    first = source.load(CHUNK, PX)
    folder = source.folder(PX)
    assert (folder / LOCK).exists()  # it was filled under the lock
    (folder / LOCK).unlink()
    assert np.array_equal(source.load(CHUNK, PX), first)
    assert not (folder / LOCK).exists()  # nothing to make: no lock taken, nothing written
