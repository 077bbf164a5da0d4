"""How the ``diversity`` and ``class_entropy`` strategies choose, on plain arrays.

The server's strategies (``strategies.py``) and the simulated annotation study (``bench/``) both
call these, so the study measures exactly what the server does.
"""

from __future__ import annotations

import numpy as np


def coverage_pick(labelled: np.ndarray, candidates: np.ndarray) -> int:
    """Index of the candidate that best covers the part of the pool no labelled study covers.

    ``labelled`` (L, D) and ``candidates`` (N, D) are features of one model (L may be 0). A study
    covers another as far as it is closer to it than that study's nearest labelled one; the pick
    is the candidate whose addition most lowers the pool's summed distance to its nearest
    labelled study (one greedy step of k-medoids / facility location). Unlike the k-center pick
    (the candidate farthest from everything labelled), it never asks for a lone outlier while a
    whole group of similar studies is still uncovered: a study typical of an unlabelled region,
    not the most unusual one. With nothing labelled, the candidate most central to the pool.
    Ties: the lowest index.
    """
    candidates = _unit(candidates)
    between = np.linalg.norm(candidates[:, None] - candidates[None], axis=-1)  # (N, N)
    if len(labelled):
        nearest = np.linalg.norm(candidates[:, None] - _unit(labelled)[None], axis=-1).min(axis=1)
    else:
        nearest = np.full(len(candidates), between.max())
    gain = np.clip(nearest[:, None] - between, 0.0, None).sum(axis=0)
    return int(np.argmax(gain))


def _unit(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: distances compare directions, not activation sizes."""
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def gumbel_scale(labelled_studies: int, initial: float) -> float:
    """The scale of the Gumbel noise on the log score: ``initial / labelled studies`` (``initial``
    with none). Noise first spreads the picks (the score of a model trained on one or two studies
    says little), then lets the score decide."""
    return initial / max(labelled_studies, 1)


# Fewer voxels than a 2 x 2 x 2 block are taken as stray predictions, not a structure in the study.
MIN_PREDICTED_VOXELS = 8


def fewest_labelled_structure(labelled_voxels: np.ndarray, predicted_voxels: np.ndarray) -> int | None:
    """The channel to ask for: of the structures that some saved label holds and some candidate is
    predicted to hold, the one with the fewest labelled voxels so far; on a tie, the one predicted
    largest over the candidates. When no candidate holds a labelled structure (nothing labelled
    yet), any structure a candidate holds.

    Structures no saved label holds are not asked for: annotators label the structures they work
    on, not all 104, and a structure nobody labels would be asked for forever. (In the simulated
    study a model trained on few studies also predicts stray voxels of absent structures, such as
    "face" in a trunk phantom, which would be asked for first.)

    ``labelled_voxels`` (C,): voxels per channel in the saved labels. ``predicted_voxels`` (N, C):
    voxels each candidate's mean prediction labels with each channel; a candidate holds a
    structure from :data:`MIN_PREDICTED_VOXELS` on. Channel 0 (background) is never a target.
    None when no candidate holds a structure that may be asked for.
    """
    labelled_voxels = np.asarray(labelled_voxels)
    held = np.where(predicted_voxels >= MIN_PREDICTED_VOXELS, predicted_voxels, 0).sum(axis=0).astype(np.float64)
    held[0] = 0.0
    present = np.flatnonzero((held > 0) & (labelled_voxels > 0))
    if not len(present):
        present = np.flatnonzero(held > 0)
    if not len(present):
        return None
    order = np.lexsort((-held[present], labelled_voxels[present]))
    return int(present[order[0]])


def noisy_pick(scores: np.ndarray, scale: float, rng: np.random.Generator) -> int:
    """Index of the largest ``log(score) + scale * Gumbel noise`` among finite scores (NaN: not a
    candidate): a draw with probability proportional to ``score ** (1 / scale)``, the greedy
    argmax at scale 0 (power sampling, Kirsch et al. 2023)."""
    scores = np.asarray(scores, dtype=np.float64)
    valid = np.isfinite(scores)
    if not valid.any():
        raise ValueError("no candidate has a score")
    keys = np.log(np.clip(scores, 1e-12, None)) + scale * rng.gumbel(size=scores.shape)
    return int(np.argmax(np.where(valid, keys, -np.inf)))


def class_entropy_pick(
    labelled_voxels: np.ndarray,
    predicted_voxels: np.ndarray,
    structure_entropy: np.ndarray,
    labelled_studies: int,
    initial_scale: float,
    rng: np.random.Generator,
) -> tuple[int, int] | None:
    """(candidate index, target channel): the target is :func:`fewest_labelled_structure`, the
    candidate the one of those holding it picked by its entropy for the target (``structure_entropy``
    (N, C)) with noise of :func:`gumbel_scale`. None when no candidate holds any structure."""
    target = fewest_labelled_structure(labelled_voxels, predicted_voxels)
    if target is None:
        return None
    scores = np.where(predicted_voxels[:, target] >= MIN_PREDICTED_VOXELS, structure_entropy[:, target], np.nan)
    return noisy_pick(scores, gumbel_scale(labelled_studies, initial_scale), rng), target
