"""Classifiers: one registry, a frozen config that owns each model's identity, label maps, checkpoints, the zoo."""
from advbg.models.classifier import Classifier, ClassifierConfig
from advbg.models.label_map import LabelMap
from advbg.models.loading import ModelSpec, as_classifier, load_classifier, resolve_device
from advbg.models.weights import register, registered_names

__all__ = ["Classifier", "ClassifierConfig", "LabelMap", "ModelSpec", "as_classifier", "load_classifier", "register",
           "registered_names", "resolve_device"]
