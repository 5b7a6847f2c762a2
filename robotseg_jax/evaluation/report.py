"""Evaluation results: per-video scores collected while running, and the paper-style summary written from them.

Scores are J, F and J&F in percent. As in RobotSeg's VRS evaluator, a category's dataset score is the unweighted
mean over its videos of the per-video means; the three categories are never averaged together. Per-embodiment
rows apply the same mean within each embodiment.

Files (next to the prediction folders `<out>/<setting>/<category>/<video>/`):
    <out>/results.csv                                   setting, category, group (all | embodiment), videos, J, F, J&F
    <out>/results.json                                  the same, the per-video scores, what was skipped and why
    <out>/<setting>/<category>/results_<category>.csv   upstream's per-video file (`scores.results_csv`)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any

from robotseg_jax.constants import CATEGORY_FOLDERS
from robotseg_jax.evaluation.scores import (
    Score,
    mean_over_videos,
    mean_per_group,
    results_csv,
)

ALL = "all"  # the group name of the whole-dataset row


@dataclasses.dataclass
class EvalResults:
    settings: list[str]
    categories: list[str]
    scores: dict[tuple[str, str], dict[str, Score]] = dataclasses.field(default_factory=dict)
    embodiments: dict[str, str] = dataclasses.field(default_factory=dict)  # video name -> embodiment
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)  # setting -> why it was not run
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {video, category, reason}

    def add(self, setting: str, category: str, video: str, embodiment: str, score: Score) -> None:
        self.scores.setdefault((setting, category), {})[video] = score
        self.embodiments[video] = embodiment

    def skip(self, video: str, category: str, reason: str) -> None:
        self.skipped.append({"video": video, "category": category, "reason": reason})

    def groups(self, setting: str, category: str) -> dict[str, tuple[Score, int]]:
        """{"all" or embodiment: (mean score, number of videos)}; empty when nothing was scored."""
        per_video = self.scores.get((setting, category), {})
        if not per_video:
            return {}
        counts: dict[str, int] = {}
        for video in per_video:
            counts[self.embodiments[video]] = counts.get(self.embodiments[video], 0) + 1
        by_embodiment = mean_per_group(per_video, self.embodiments.__getitem__)
        return {
            ALL: (mean_over_videos(per_video.values()), len(per_video)),
            **{group: (score, counts[group]) for group, score in by_embodiment.items()},
        }

    def embodiment_names(self) -> list[str]:
        return sorted(set(self.embodiments.values()))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable copy (`from_json` reads it back): to collect the results of several processes."""
        return {
            "settings": self.settings,
            "categories": self.categories,
            "scores": [[s, c, {v: [x.j, x.f] for v, x in per_video.items()}] for (s, c), per_video in self.scores.items()],
            "embodiments": self.embodiments,
            "unavailable": self.unavailable,
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> EvalResults:
        scores = {(s, c): {v: Score(*jf) for v, jf in per_video.items()} for s, c, per_video in document["scores"]}
        return cls(
            list(document["settings"]), list(document["categories"]), scores, dict(document["embodiments"]),
            dict(document["unavailable"]), list(document["skipped"]),
        )

    @classmethod
    def merged(cls, parts: list[EvalResults], video_order: list[str]) -> EvalResults:
        """The results of disjoint sets of videos (one per process) as one, videos in `video_order` (the means
        over videos then add in the same order as a single run's)."""
        rank = {name: i for i, name in enumerate(video_order)}
        merged = cls(parts[0].settings, parts[0].categories, unavailable=dict(parts[0].unavailable))
        for key in dict.fromkeys(key for part in parts for key in part.scores):
            per_video = {v: x for part in parts for v, x in part.scores.get(key, {}).items()}
            merged.scores[key] = dict(sorted(per_video.items(), key=lambda item: rank[item[0]]))
        for part in parts:
            merged.embodiments.update(part.embodiments)
        merged.skipped = sorted((s for part in parts for s in part.skipped), key=lambda s: rank[s["video"]])
        return merged


def table(results: EvalResults) -> str:
    """J&F like the paper's table: one row per setting (then one per embodiment, indented), one column per
    category; "-" where a setting was not run or nothing was scored."""
    width = max([len(ALL), *(len(e) + 2 for e in results.embodiment_names()), len("J&F (%)")]) + 2
    lines = [f"{'J&F (%)':<{width}}" + "".join(f"{c:>9}" for c in results.categories)]
    for setting in results.settings:
        groups = {c: results.groups(setting, c) for c in results.categories}
        lines.append(f"{setting:<{width}}" + "".join(_cell(groups[c].get(ALL)) for c in results.categories))
        for embodiment in results.embodiment_names():
            cells = [_cell(groups[c].get(embodiment)) for c in results.categories]
            if any(cell.strip() != "-" for cell in cells):
                lines.append(f"{'  ' + embodiment:<{width}}" + "".join(cells))
    notes = [f"{setting}: {reason}" for setting, reason in results.unavailable.items()]
    if results.skipped:
        notes.append(f"{len(results.skipped)} video/category pairs skipped (see results.json)")
    return "\n".join(lines + notes) + "\n"


def write_report(results: EvalResults, out_dir: str, run_info: dict[str, Any]) -> list[str]:
    """Writes the CSV and JSON files; returns their paths. `run_info` (model, checkpoint, data, ...) goes into
    the JSON as it is."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.csv"), os.path.join(out_dir, "results.json")]
    rows = _rows(results)
    with open(paths[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["setting", "category", "group", "videos", "J", "F", "J&F"])
        writer.writeheader()
        writer.writerows(rows)
    per_video_scores: dict[str, dict[str, dict]] = {}
    for (setting, category), per_video in results.scores.items():
        per_video_scores.setdefault(setting, {})[category] = {v: _score_dict(s) for v, s in sorted(per_video.items())}
    document = {
        "run": run_info,
        "summary": rows,
        "per_video": per_video_scores,
        "embodiments": dict(sorted(results.embodiments.items())),
        "unavailable": results.unavailable,
        "skipped": results.skipped,
    }
    with open(paths[1], "w") as f:
        json.dump(document, f, indent=2)
    for (setting, category), per_video in results.scores.items():
        path = os.path.join(out_dir, setting, category, f"results_{category}.csv")
        with open(path, "w") as f:
            f.write(results_csv(per_video, CATEGORY_FOLDERS[category]))
        paths.append(path)
    return paths


def _rows(results: EvalResults) -> list[dict[str, Any]]:
    rows = []
    for setting in results.settings:
        for category in results.categories:
            for group, (score, count) in results.groups(setting, category).items():
                rows.append(
                    {"setting": setting, "category": category, "group": group, "videos": count, **_score_dict(score)}
                )
    return rows


def _score_dict(score: Score) -> dict[str, float]:
    return {"J": round(score.j, 4), "F": round(score.f, 4), "J&F": round(score.jf, 4)}


def _cell(entry: tuple[Score, int] | None) -> str:
    return f"{'-':>9}" if entry is None else f"{entry[0].jf:>9.1f}"
