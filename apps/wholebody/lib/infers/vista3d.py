"""``vista3d``: automatic segmentation by class prompts (VISTA3D, MONAI bundle ``vista3d``), and the
base class it shares with ``vista3d_point``.

The pipeline is the bundle's ``inference.json``: preprocessing (``lib.pipelines.vista3d.preprocessing``),
the class head over a sliding window (``SlidingWindowInfererAdapt``, 128^3, replicate padding, as the
bundle's ``scripts/inferer.py``), ``VistaPostTransformd`` and ``Invertd`` with nearest interpolation.
Where the bundle writes 255 for voxels no window computed (NaN), the answer holds 0 (background).

One deliberate difference: the bundle's inferer drops class prompts above 132 (they would need points),
so a class learned here by finetuning could not be segmented automatically; here its class prompt goes
to the class head, which the trainer taught it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.apps.vista3d.transforms import VistaPostTransformd
from monai.data import MetaTensor
from monai.transforms import CastToTyped, Invertd, Lambdad, MapTransform, SqueezeDimd, Transform
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.acceleration import cpu_precision
from lib.acceleration.cpu_memory import reusing_freed_memory
from lib.conf import as_bool
from lib.measurements import on_image as measurements
from lib.vista3d.prompts import PromptError, ResolvedPrompts, resolve_prompts
from lib.vista3d.runtime import PreprocessedImage, Vista3DRuntime

logger = logging.getLogger(__name__)

PREP_KEY = "_vista3d_image"
PROMPTS_KEY = "_vista3d_prompts"
RESULT_KEY = "_vista3d_result"
EVERYTHING_WORDS = {"", "everything", "all", "none", "auto"}


def parse_label_prompt(value: Any) -> Any:
    """A request's ``label_prompt``: ``"everything"`` (or empty) -> None; ``"liver, 3"`` -> ``["liver", "3"]``;
    a list or a single id as given (``resolve_prompts`` checks the items)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            try:
                return parse_label_prompt(json.loads(text))
            except json.JSONDecodeError:
                raise PromptError(f"label_prompt is not valid JSON: {value!r}") from None
        if text.lower() in EVERYTHING_WORDS:
            return None
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str) and value[0].strip().lower() in EVERYTHING_WORDS:
        return None
    return value


class LoadVista3DImaged(Transform):
    """The bundle's preprocessing through the runtime's cache: ``data["image"]`` (a path) becomes the
    preprocessed [1, H, W, D] image; ``data[PREP_KEY]`` keeps what inversion and clicks need."""

    def __init__(self, runtime: Vista3DRuntime, device: Any = None):
        self.runtime = runtime
        self.device = device

    def __call__(self, data):
        d = dict(data)
        path = d.get("image")
        if not isinstance(path, str):
            raise PromptError("VISTA3D needs an image id, an uploaded file or a session, not raw pixels")
        prep, cached = self.runtime.preprocess(path, self.device)
        d["image"] = prep.image
        d[PREP_KEY] = prep
        d[RESULT_KEY] = {"preprocessing": "cached" if cached else "computed"}
        return d


class VistaOutputd(MapTransform):
    """``VistaPostTransformd`` with this request's prompts (in the preprocessed grid): logits
    [B, H, W, D] -> one channel of global class ids, NaN kept where no window ran."""

    def __call__(self, data):
        d = dict(data)
        prompts = d[PROMPTS_KEY]
        for key in self.key_iterator(d):
            sub = {key: d[key], **{k: v for k, v in prompts.items() if v is not None}}
            d[key] = VistaPostTransformd(keys=key)(sub)[key]
        return d


class Vista3DTask(BasicInferTask):
    """Shared by ``vista3d`` and ``vista3d_point``: weights check, learned classes in ``/info/``,
    cached preprocessing, post-processing and the cache counters in the answer."""

    def __init__(
        self, runtime: Vista3DRuntime, type: str, description: str, config: dict[str, Any] | None = None, precision: str = "fp32"
    ):
        """``precision``: the served CPU default after the CPU check (lib/acceleration/cpu_precision.py)."""
        super().__init__(
            path=None,
            network=None,
            type=type,
            labels=runtime.labels(),
            dimension=3,
            description=description,
            config={"result_dtype": "uint8", "precision": cpu_precision.choices(precision), measurements.OPTION: True, **(config or {})},
        )
        self.runtime = runtime

    # ------------------------------------------------------------------ what /info/ shows
    def is_valid(self) -> bool:
        return True  # listed even without weights, with 'untrained' and the message

    def info(self) -> dict[str, Any]:
        self.labels = self.runtime.labels()  # learned classes appear without a restart
        info = super().info()
        info["weights"] = {"default": self.runtime.checkpoint.status()}
        info["cpu_precision"] = self._config["precision"][0]
        info["untrained"] = self.runtime.checkpoint_path() is None
        if info["untrained"]:
            info["message"] = self.runtime.unavailable_message()
            info["description"] += " [UNAVAILABLE: no weights, see 'message']"
        return info

    # ------------------------------------------------------------------ request
    def __call__(self, request, callbacks=None):
        self.labels = self.runtime.labels()
        request = {**request, "precision": cpu_precision.requested(request, self._config["precision"])}  # 422 early
        self.check_request(request)  # a bad prompt is 422 with or without weights
        as_bool(request.get(measurements.OPTION, True), measurements.OPTION)
        self.runtime.require_weights()  # 503 naming the path, before reading anything
        before = self.runtime.inferer.stats()
        with reusing_freed_memory():  # CPU memory reused within the request, handed back after it
            result_file, result_json = super().__call__(request, callbacks)
        extra = result_json.pop(RESULT_KEY, {})
        result_json["label_names"] = extra.pop("label_names", result_json.get("label_names"))
        after = self.runtime.stats()
        delta = {k: after[k] - before[k] for k in ("encoder_runs", "cache_hits", "cache_misses", "head_runs", "head_reuses", "evictions")}
        result_json["vista3d_cache"] = {**after, "request": {**delta, "preprocessing": extra.pop("preprocessing", None)}}
        result_json["precision"] = extra.pop("precision", None)
        result_json["vista3d"] = extra
        return result_file, measurements.report_latency(result_json)

    def check_request(self, request: dict[str, Any]) -> None:
        """Checks that need no image (fail before reading it)."""

    def prompts(self, data: dict[str, Any], prep: PreprocessedImage) -> ResolvedPrompts:
        raise NotImplementedError

    def logits(self, network, image, prompts: ResolvedPrompts, prep: PreprocessedImage, model_key, data) -> tuple[torch.Tensor, dict]:
        """[1, B, H, W, D] logits and the prompts ``VistaPostTransformd`` needs (preprocessed grid)."""
        raise NotImplementedError

    def pre_transforms(self, data=None):
        return [LoadVista3DImaged(self.runtime)]

    def inverse_transforms(self, data=None):
        return None  # inverted in post_transforms with Invertd, as the bundle does

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        prep: PreprocessedImage = data[PREP_KEY]
        prompts = self.prompts(data, prep)
        network, model_key = self.runtime.network(device)
        image = data[self.input_key][None].to(torch.device(device))
        # The cached encoder outputs are keyed by the autocast state too: a bf16 click never reuses fp32 features.
        with torch.no_grad(), cpu_precision.autocast(device, data["precision"]):
            logits, post_prompts = self.logits(network, image, prompts, prep, model_key, data)
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        if not isinstance(logits, MetaTensor):
            logits = MetaTensor(logits, affine=prep.image.affine, meta=prep.image.meta)
        data[self.output_label_key] = logits[0].float().clone()
        data[PROMPTS_KEY] = post_prompts
        data[RESULT_KEY].update(self.describe(prompts, data))
        data[RESULT_KEY]["precision"] = data["precision"] if torch.device(device).type == "cpu" else "amp"
        return data

    def describe(self, prompts: ResolvedPrompts, data: dict[str, Any]) -> dict[str, Any]:
        """What the answer says about the prompts (``label_names`` becomes the answer's ``label_names``)."""
        return {
            "mode": prompts.mode,
            "label_prompt": list(prompts.label_prompt) if prompts.label_prompt is not None else None,
            "label_names": dict(prompts.label_names),
        }

    def post_transforms(self, data=None):
        return [
            VistaOutputd(keys="pred"),
            Invertd(keys="pred", transform=data[PREP_KEY].compose, orig_keys="image", nearest_interp=True, to_tensor=True),
            # the bundle writes 255 where no window ran; Slicer would show it as a segment: background instead
            Lambdad(keys="pred", func=lambda x: torch.nan_to_num(x, nan=0.0)),
            SqueezeDimd(keys="pred", dim=0),
            CastToTyped(keys="pred", dtype=torch.uint8),
        ]

    def writer(self, data, extension=None, dtype=None):
        result_file, result_json = super().writer(data, extension, dtype)
        result = dict(data.get(RESULT_KEY, {}))
        result_json = measurements.add_measurements(result_json, data, result.get("label_names") or {}, self.output_label_key)
        result_json[RESULT_KEY] = result
        return result_file, result_json


class Vista3DSegmentation(Vista3DTask):
    """``vista3d``: ``label_prompt`` = global class ids or names (default from the config, "everything");
    kidney, lung and bone expand to their subclasses. ``label_names`` in the answer: VISTA3D names."""

    def __init__(self, runtime: Vista3DRuntime, label_prompt: str, overlap: float, precision: str = "fp32"):
        super().__init__(
            runtime,
            InferType.SEGMENTATION,
            "VISTA3D automatic segmentation by class prompts (127 structures; MONAI bundle vista3d)",
            config={"label_prompt": label_prompt},
            precision=precision,
        )
        self.overlap = overlap

    def check_request(self, request):
        if request.get("points") or request.get("foreground") or request.get("background"):
            raise PromptError("vista3d segments by class prompts only: send clicks to vista3d_point")
        self._resolve(request, (1, 1, 1))

    def _resolve(self, data, shape) -> ResolvedPrompts:
        value = data.get("label_prompt", self._config.get("label_prompt"))
        return resolve_prompts(parse_label_prompt(value), None, None, shape, self.runtime.extra_classes())

    def prompts(self, data, prep):
        return self._resolve(data, prep.original_shape)

    def logits(self, network, image, prompts, prep, model_key, data):
        class_vector = torch.tensor(prompts.class_vector, device=image.device).unsqueeze(-1)
        logits = self.runtime.inferer.sliding_window(
            network,
            image,
            class_vector,
            image_key=prep.key,
            prompt_class=class_vector.clone(),
            overlap=self.overlap,
            model_key=model_key,
        )
        return logits, {"label_prompt": class_vector.cpu()}
