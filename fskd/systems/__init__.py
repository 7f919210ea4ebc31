"""LightningModules composing backbones, heads, losses and evaluation."""

from fskd.systems.base import FaceRecognitionModule
from fskd.systems.distill import DistillModule
from fskd.systems.teacher import TeacherModule

__all__ = ["DistillModule", "FaceRecognitionModule", "TeacherModule"]
