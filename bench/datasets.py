"""Upload and load times of a large data set file: the API's side and a worker's side.

    python bench/datasets.py                      # 100 MB CSV and .npz, SQLite + file store
    python bench/datasets.py --mb 20              # a quick look
    python bench/datasets.py --database-url postgresql+psycopg://user:pw@127.0.0.1/db

Writes a CSV and an .npz file of about ``--mb`` MB each (random regression data, 64 float
columns), starts the real app under uvicorn on a loopback port, and uploads each file over
HTTP with the Python client (streamed from disk). Then, as a worker does: fetches the bytes
from the store into a fresh worker cache (``workers/dataset_cache.py``) and reads them into
arrays (``workers/data.UploadedSource``). Prints one JSON line per file and phase:
``upload_s`` (client send to 201: streaming to disk, hashing, checking every value, storing),
``fetch_s`` (store -> worker cache, hash checked), ``read_s`` (file -> float32 arrays) and
``peak_rss_mb`` of this process after each phase (the API runs in it).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner_service import auth  # noqa: E402
from tuner_service.app import create_app  # noqa: E402
from tuner_service.client import TunerClient  # noqa: E402
from tuner_service.config import Settings  # noqa: E402
from tuner_service.db.migrate import upgrade  # noqa: E402
from tuner_service.runtime import build_runtime  # noqa: E402

FEATURES = 64


def write_files(folder: Path, megabytes: float) -> list[Path]:
    """A CSV and an .npz of random regression data, each about ``megabytes`` MB."""
    # A CSV value here is ~20 characters; an .npz value 4 bytes (float32).
    rows_csv = int(megabytes * 1e6 / ((FEATURES + 1) * 20))
    rows_npz = int(megabytes * 1e6 / ((FEATURES + 1) * 4))
    rng = np.random.default_rng(0)
    csv_path, npz_path = folder / "big.csv", folder / "big.npz"
    x = rng.normal(size=(rows_csv, FEATURES))
    table = np.column_stack([x, x[:, :4].sum(axis=1)])
    header = ",".join([f"f{i}" for i in range(FEATURES)] + ["target"])
    np.savetxt(csv_path, table, delimiter=",", header=header, comments="", fmt="%.15g")
    x32 = rng.normal(size=(rows_npz, FEATURES)).astype(np.float32)
    np.savez(npz_path, x=x32, y=x32[:, :4].sum(axis=1))
    return [csv_path, npz_path]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    import uvicorn

    from tests.servers import free_port
    from workers.data import UploadedSource
    from workers.dataset_cache import DatasetCache

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        settings = Settings(home=home, database_url=args.database_url)
        upgrade(settings)
        rt = build_runtime(settings)
        token = auth.create_token(rt.sessions, tenant="bench", admin=False)[1]
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings, recover_every_s=None),
                                               host="127.0.0.1", port=port,
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        try:
            for path in write_files(Path(tmp), args.mb):
                size = path.stat().st_size
                with TunerClient(f"http://127.0.0.1:{port}", token=token) as client:
                    start = time.perf_counter()
                    dataset = client.upload_dataset(
                        path, label_column="target" if path.suffix == ".csv" else None)
                    upload_s = time.perf_counter() - start
                cache = DatasetCache(Path(tmp) / f"cache-{path.suffix[1:]}", 2**40, rt.blobs)
                start = time.perf_counter()
                local = cache.path_for(dataset.sha256)
                fetch_s = time.perf_counter() - start
                start = time.perf_counter()
                arrays = UploadedSource(local, dataset.format, dataset.label_column,
                                        "values").arrays()
                read_s = time.perf_counter() - start
                print(json.dumps({
                    "format": dataset.format, "size_mb": round(size / 1e6, 1),
                    "store": "database" if settings.uses_database_store else "files",
                    "n_examples": dataset.n_examples, "upload_s": round(upload_s, 2),
                    "upload_mb_per_s": round(size / 1e6 / upload_s, 1),
                    "fetch_s": round(fetch_s, 2), "read_s": round(read_s, 2),
                    "x_shape": list(arrays.x_train.shape),
                    "peak_rss_mb": round(peak_rss_mb()),
                }), flush=True)
        finally:
            server.should_exit = True
            rt.close()


if __name__ == "__main__":
    main()
