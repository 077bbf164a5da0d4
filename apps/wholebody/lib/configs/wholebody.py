"""Config of ``wholebody``: the constants its infer and train tasks share."""

from __future__ import annotations

import os

from monailabel.interfaces.config import TaskConfig

import lib.infers.wholebody
import lib.trainers.structure_head
import lib.trainers.wholebody
from lib.acceleration import cpu_precision
from lib.acceleration.tensorrt import precision_from_conf
from lib.activelearning.scoring import SCORE_KEY, WholeBodyUncertainty
from lib.activelearning.strategies import ClassEntropy, Diversity, DiversityThenClassEntropy, Uncertainty
from lib.conf import Conf, ConfError
from lib.configs.distributed_training import torchrun_launch
from lib.heads.merge import OVERLAP_RULES
from lib.heads.store import HeadStore
from lib.labels import wholebody_labels
from lib.networks import wholebody_segresnet
from lib.pipelines.wholebody import CPU_PRECISION, PIXDIM
from lib.transforms import body_mask
from lib.weights.official import OfficialCheckpoint


class WholeBodySegmentation(TaskConfig):
    def init(self, name, model_dir, conf, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        options = Conf(conf)
        self.labels = wholebody_labels()
        self.highres = options.bool("highres", True)
        self.max_epochs = options.int("max_epochs", 50, minimum=1)
        self.val_split = options.float("val_split", 0.2, low=0.0, high=0.9)
        self.trt_precision = precision_from_conf(options)
        self.channels_last = options.bool("channels_last", True)
        self.cpu_precision = cpu_precision.precision_from_conf(options, CPU_PRECISION)
        self.skip_air, self.body = body_mask.from_conf(options)
        self.torchrun = torchrun_launch(name, options)
        self.checkpoints = {
            True: OfficialCheckpoint("wholebody_highres", model_dir, options, os.path.join(model_dir, f"{name}_highres.pt")),
            False: OfficialCheckpoint("wholebody_lowres", model_dir, options, os.path.join(model_dir, f"{name}_lowres.pt")),
        }
        # New structures as decoder heads (lib/heads/, README "Adding structures").
        self.heads = HeadStore(os.path.join(model_dir, f"{name}_heads"))
        self.head_overlap = (options.raw("head_overlap") or "new").lower()
        if self.head_overlap not in OVERLAP_RULES:
            raise ConfError(f"'head_overlap' must be one of {', '.join(OVERLAP_RULES)}, got {self.head_overlap!r}")
        for checkpoint in self.checkpoints.values():
            checkpoint.fetch_in_background()
        # Active learning (README "Active learning"): the cost of one study's score is
        # al_mc_samples x al_windows forward passes of al_roi^3 voxels at 3 mm.
        self.al_mc_samples = options.int("al_mc_samples", 4, minimum=2)
        self.al_windows = options.int("al_windows", 1, minimum=1)
        self.al_roi = options.int("al_roi", 64, minimum=16)
        if self.al_roi % 8:
            raise ConfError(f"'al_roi' must be a multiple of 8 (the SegResNet halves the size 3 times), got {self.al_roi}")
        self.al_threads = options.int("al_threads", 1, minimum=1)
        # class_entropy's noise scale with one labelled study (it decays as 1 / labelled studies), and
        # how many labelled studies diversity_then_class_entropy picks by diversity before.
        self.al_gumbel_scale = options.float("al_gumbel_scale", 1.0, low=0.0)
        self.al_diversity_studies = options.int("al_diversity_studies", 3, minimum=0)

    def weights(self):
        return {("highres" if res else "lowres"): c.status() for res, c in self.checkpoints.items()}

    def infer(self):
        return lib.infers.wholebody.WholeBodySegmentation(
            network_factory=wholebody_segresnet,
            labels=self.labels,
            checkpoints={res: c.paths for res, c in self.checkpoints.items()},
            highres=self.highres,
            weights=self.weights,
            heads=self.heads,
            head_overlap=self.head_overlap,
            trt_precision=self.trt_precision,
            channels_last=self.channels_last,
            precision=self.cpu_precision,
            skip_air=self.skip_air,
            body=self.body,
        )

    def trainer(self):
        """``wholebody`` fine-tunes the 104-class model; ``wholebody_structures`` adds structures as heads."""
        common = dict(
            network_factory=wholebody_segresnet,
            labels=self.labels,
            checkpoints={res: c.paths for res, c in self.checkpoints.items()},
            highres=self.highres,
            max_epochs=self.max_epochs,
            val_split=self.val_split,
        )
        return {
            self.name: lib.trainers.wholebody.WholeBodySegmentation(
                model_dir=os.path.join(self.model_dir, "train", self.name), torchrun=self.torchrun, **common
            ),
            f"{self.name}_structures": lib.trainers.structure_head.StructureHeadTrainer(
                model_dir=os.path.join(self.model_dir, "train", f"{self.name}_structures"), heads=self.heads, **common
            ),
        }

    # --- active learning (lib/activelearning/) ---
    def scoring_method(self):
        """MC dropout uncertainty of the lowres model, whatever ``highres`` serves: cheap enough for the
        background, and scores of one model stay comparable."""
        return {
            SCORE_KEY: WholeBodyUncertainty(
                network_factory=wholebody_segresnet,
                checkpoint_paths=self.checkpoints[False].paths,
                labels=self.labels,
                pixdim=PIXDIM[False],
                roi_size=(self.al_roi,) * 3,
                mc_samples=self.al_mc_samples,
                windows=self.al_windows,
                threads=self.al_threads,
            )
        }

    def strategy(self):
        diversity = Diversity(SCORE_KEY)
        class_entropy = ClassEntropy(SCORE_KEY, self.labels, noise_scale=self.al_gumbel_scale)
        return {
            "diversity_then_class_entropy": DiversityThenClassEntropy(diversity, class_entropy, self.al_diversity_studies),
            "diversity": diversity,
            "class_entropy": class_entropy,
            "uncertainty": Uncertainty(SCORE_KEY),
        }
