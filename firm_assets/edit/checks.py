"""Gates on the edit chain: score ranges, failure rates of every model stage and quarantine counts."""

from firm_assets.curation import gates
from firm_assets.edit.candidates import edit_candidates
from firm_assets.edit.captions import difference_captions
from firm_assets.edit.dataset import firm_edit_dataset
from firm_assets.edit.requests import edit_requests
from firm_assets.edit.scores import DIMENSIONS, edit_scores
from firm_assets.edit.source_images import source_images

SCORE_COLUMNS = [f"{dimension}_score" for dimension in DIMENSIONS]

edit_scores_in_range = gates.scores_in_range_check(edit_scores, SCORE_COLUMNS, "Every score lies in 1-5.")
edit_scores_failure_rate = gates.failure_rate_check(edit_scores, SCORE_COLUMNS, "scores")
edit_scores_judge_drift = gates.judge_drift_check(
    edit_scores, "edit", [f"{d}_scores" for d in DIMENSIONS], "candidate_id"
)
edit_candidates_failure_rate = gates.render_failure_check(edit_candidates, "edited-image renders")
difference_captions_failure_rate = gates.failure_rate_check(
    difference_captions, ["caption"], "difference captions"
)
edit_requests_quarantine = gates.quarantine_check(edit_requests, "request lines")
source_images_quarantine = gates.quarantine_check(source_images, "images")
firm_edit_dataset_not_empty = gates.not_empty_check(firm_edit_dataset)
