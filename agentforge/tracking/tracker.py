"""One reporting surface for a phase, whether Lightning drives it or not.

Scalars go to every logger (W&B, CSV/TensorBoard, metrics.jsonl); tables are written as CSV and
logged as ``wandb.Table``; images as PNG files and ``wandb.Image``; artifacts are real files in the run
directory, uploaded as ``wandb.Artifact`` when W&B is on. Files are always written, so a run with
``logger=none`` still leaves its tables and plots behind.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from agentforge.io import write_json_atomic, write_text_atomic
from agentforge.tracking.loggers import JsonlLogger, wandb_run


def _safe(key: str) -> str:
    return key.replace("/", "__")


class Tracker:
    def __init__(self, loggers: list, run_dir: str | Path):
        self.loggers, self.run_dir = loggers, Path(run_dir)
        self.summary_data: dict[str, Any] = {}

    @property
    def wandb(self):
        return wandb_run(self.loggers)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Scalars (and strings, which only W&B and the JSONL keep) under their exact keys."""
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numeric.update({k: float(v) for k, v in metrics.items() if isinstance(v, bool)})
        for lg in self.loggers:
            if isinstance(lg, JsonlLogger):
                lg.log_metrics(dict(metrics), step)
            elif lg.__class__.__name__ == "WandbLogger":
                # never pass wandb's own step: Lightning logs to the same run without one
                extra = {"trainer/global_step": step} if step is not None else {}
                lg.experiment.log({**metrics, **extra})
            else:
                lg.log_metrics(numeric, step)
        self.summary_data.update(metrics)

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> Path:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(columns)
        w.writerows(rows)
        path = write_text_atomic(self.run_dir / "tables" / f"{_safe(key)}.csv", buf.getvalue())
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Table(columns=columns, data=[list(r) for r in rows])})
        return path

    def image(self, key: str, path: str | Path) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Image(str(path))})

    def histogram(self, key: str, values) -> None:
        values = [float(v) for v in values]
        write_json_atomic(self.run_dir / "histograms" / f"{_safe(key)}.json", values)
        if self.wandb is not None and values:
            import wandb

            self.wandb.log({key: wandb.Histogram(values)})

    def line_series(self, key: str, xs: list, ys: list[list], keys: list[str], title: str, xname: str) -> None:
        rows = [[x] + [series[i] if i < len(series) else None for series in ys] for i, x in enumerate(xs)]
        self.table(key + "_data", [xname] + keys, rows)
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.plot.line_series(xs=list(xs), ys=[list(y) for y in ys], keys=keys,
                                                        title=title, xname=xname)})

    def artifact(self, name: str, type_: str, paths: list[str | Path], description: str = "",
                 metadata: dict | None = None) -> None:
        if self.wandb is None:
            return
        import wandb

        art = wandb.Artifact(name=name, type=type_, description=description, metadata=metadata or {})
        for p in paths:
            p = Path(p)
            art.add_dir(str(p), name=p.name) if p.is_dir() else art.add_file(str(p))
        self.wandb.log_artifact(art)

    def summary(self, values: dict[str, Any]) -> None:
        """Final figures: logged, and kept in the W&B run summary. W&B's summary stores a non-finite float as null
        (the history keeps NaN), so such a figure (an undefined correlation) also gets ``<key>_undefined: true`` there:
        a dashboard reading the summary can tell "undefined" from "not logged"."""
        self.log(values)
        if self.wandb is not None:
            for k, v in values.items():
                self.wandb.summary[k] = v
                if isinstance(v, float) and not math.isfinite(v):
                    self.wandb.summary[f"{k}_undefined"] = True

    def label(self, labels: list[str]) -> None:
        """Add ``labels`` to the W&B run's tags (kept once each, after the tags the run started with), so the W&B UI
        can filter runs by them. Without W&B there is nothing to label: ``stats.json`` holds the verdict."""
        run = self.wandb
        if run is not None:
            run.tags = tuple(dict.fromkeys([*(run.tags or ()), *labels]))

    def write_json(self, name: str, obj: Any) -> Path:
        return write_json_atomic(self.run_dir / name, obj)


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
