"""Transfer learning: stages and freezing, classifier heads, feature taps, pooled embeddings."""

from keras_vggres.transfer.embeddings import embed, embed_dataset
from keras_vggres.transfer.heads import classifier, classifier_head, feature_extractor
from keras_vggres.transfer.stages import (FreezeSummary, freeze, freeze_summary, stages,
                                          unfreeze)

__all__ = ["stages", "freeze", "unfreeze", "freeze_summary", "FreezeSummary", "classifier",
           "classifier_head", "feature_extractor", "embed", "embed_dataset"]
