"""Tables that describe a dataset from its manifest (what `kit data` prints)."""

from __future__ import annotations

import pandas as pd

from kit.data.sample import SPLITS


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images, nuclei, nuclei per image, size range and dtypes for each split, plus a total row."""

    def describe(name: str, rows: pd.DataFrame) -> dict[str, object]:
        nuclei = rows["n_nuclei"].dropna()
        sizes = rows["height"].astype(str) + "×" + rows["width"].astype(str)
        by_area = (rows["height"] * rows["width"]).sort_values()
        return {
            "split": name,
            "images": len(rows),
            "with truth": len(nuclei),
            "nuclei": int(nuclei.sum()) if len(nuclei) else 0,
            "nuclei/image": float(nuclei.mean()) if len(nuclei) else float("nan"),
            "sizes": f"{sizes[by_area.index[0]]} … {sizes[by_area.index[-1]]}" if len(rows) else "",
            "dtypes": ",".join(sorted(set(rows["dtype"]))),
        }

    order = [s for s in SPLITS if s in set(manifest["split"])]
    out = [describe(s, manifest[manifest["split"] == s]) for s in order]
    out.append(describe("all", manifest))
    return pd.DataFrame(out)
