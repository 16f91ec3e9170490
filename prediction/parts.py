"""Per-shard part files of an offline classification run, and their merge into the catalogue.

    store = PartStore(Path("out.csv"), plan={...})   # out.csv.parts/: plan.json + one file per shard
    store.write(shard.key, rows)                     # atomic: a killed run never leaves half a part
    store.merge(all_shard_keys)                      # -> out.csv (or out.parquet), parts removed

Rows are the bulk classifier's CSV rows (survey.rows.header_for / row_for), so both tools
write the same columns with the same number formatting. Parquet output keeps those columns, with
`label` an integer, the confidence and class probabilities floats (empty -> null) and the
`embedding_*` columns lists of float32.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from galaxy_morph.files import atomic_path, atomic_write_json

PLAN_FILE = "plan.json"
FORMATS = {".csv": "csv", ".parquet": "parquet"}


class OutputError(ValueError):
    """The output path cannot be used (exists, other settings, unknown format)."""


def output_format(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise OutputError(f"{out}: the output must end in .csv or .parquet")
    return fmt


class PartStore:
    def __init__(self, out: Path, plan: dict, header: list[str], class_names: list[str]):
        self.out = Path(out)
        self.format = output_format(self.out)
        self.header = header
        self.float_columns = {"confidence", *class_names}  # Parquet types; the rest stays text
        self.dir = self.out.with_name(self.out.name + ".parts")
        plan_file = self.dir / PLAN_FILE
        if self.dir.is_dir() and plan_file.is_file():
            before = json.loads(plan_file.read_text())
            if before != plan:
                changed = sorted(k for k in set(before) | set(plan) if before.get(k) != plan.get(k))
                raise OutputError(f"{self.dir} holds a run with other settings ({', '.join(changed)}): "
                                  f"re-run with the same ones, or delete it to start again")
        elif self.out.exists():
            raise OutputError(f"{self.out} already exists: delete it or choose another --out")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(plan_file, plan, indent=2)

    @property
    def suffix(self) -> str:
        return "." + self.format

    def path(self, key: str) -> Path:
        return self.dir / (key + self.suffix)

    def done(self, key: str) -> bool:
        return self.path(key).is_file()

    def write(self, key: str, rows: list[list]) -> Path:
        path = self.path(key)
        with atomic_path(path) as tmp:
            if self.format == "csv":
                with open(tmp, "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f, lineterminator="\n")
                    w.writerow(self.header)
                    w.writerows(rows)
            else:
                import pyarrow.parquet as pq

                pq.write_table(self._table(rows), tmp)
        return path

    def _table(self, rows: list[list]):
        import pyarrow as pa

        columns = {}
        for j, name in enumerate(self.header):
            values = [r[j] for r in rows]
            if name.startswith("embedding_"):
                columns[name] = pa.array(values, pa.list_(pa.float32()))
            elif name == "label":
                columns[name] = pa.array([None if v == "" else int(v) for v in values], pa.int64())
            elif name in self.float_columns:
                columns[name] = pa.array([None if v == "" else float(v) for v in values], pa.float64())
            else:
                columns[name] = pa.array([str(v) for v in values], pa.string())
        return pa.table(columns)

    def merge(self, keys: list[str]) -> int:
        """Concatenate every part in shard order into the output; return the row count."""
        missing = [k for k in keys if not self.done(k)]
        if missing:
            raise OutputError(f"{len(missing)} shard(s) not classified yet ({missing[0]}...): re-run to resume")
        n = 0
        with atomic_path(self.out) as tmp:
            if self.format == "csv":
                with open(tmp, "w", newline="", encoding="utf-8") as f:
                    csv.writer(f, lineterminator="\n").writerow(self.header)
                    for k in keys:
                        with open(self.path(k), encoding="utf-8") as part:
                            part.readline()  # its header
                            for line in part:
                                f.write(line)
                                n += 1
            else:
                import pyarrow.parquet as pq

                writer = None
                try:
                    for k in keys:
                        table = pq.read_table(self.path(k))
                        writer = writer or pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table)
                        n += table.num_rows
                finally:
                    if writer is not None:
                        writer.close()
        shutil.rmtree(self.dir)
        return n
