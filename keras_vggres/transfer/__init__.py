"""Transfer learning: stages and freezing, heads, feature taps, embeddings, folder data, fine-tuning.

Re-exports only. `stage_layers` is the stage lookup; `stages` is its former name, kept as an
alias, so the attribute `keras_vggres.transfer.stages` is that function (as before), not the
module: import the module's other names with `from keras_vggres.transfer.stages import ...`.
"""

from keras_vggres.transfer.datasets import FolderData, compute_class_weights, from_folder, from_scan
from keras_vggres.transfer.embeddings import embed, embed_dataset
from keras_vggres.transfer.exports import FinetuneResult
from keras_vggres.transfer.extract import extract_features
from keras_vggres.transfer.finetune import finetune
from keras_vggres.transfer.heads import classifier, classifier_head, feature_extractor
from keras_vggres.transfer.hygiene import ScanReport, scan_folder
from keras_vggres.transfer.runs import Run, load_run
from keras_vggres.transfer.schedules import WarmupCosine
from keras_vggres.transfer.stages import (FreezeSummary, freeze, freeze_summary, stage_layers,
                                          stages, unfreeze)
from keras_vggres.transfer.toydata import make_toy_dataset

__all__ = ["stage_layers", "stages", "freeze", "unfreeze", "freeze_summary", "FreezeSummary",
           "classifier", "classifier_head", "feature_extractor", "embed", "embed_dataset", "from_folder",
           "from_scan", "scan_folder", "ScanReport", "FolderData", "compute_class_weights",
           "finetune", "FinetuneResult", "extract_features", "WarmupCosine", "make_toy_dataset",
           "load_run", "Run"]
