"""Classifiers: one registry, a frozen config that owns each model's identity, label maps, checkpoints, the zoo."""
from advbg.models.classifier import (
                                     Classifier,
                                     ClassifierConfig,
                                     LabelMap,
                                     ModelSpec,
                                     as_classifier,
                                     load_classifier,
                                     register,
                                     registered_names,
                                     resolve_device,
)

__all__ = ["Classifier", "ClassifierConfig", "LabelMap", "ModelSpec", "as_classifier", "load_classifier", "register",
           "registered_names", "resolve_device"]
