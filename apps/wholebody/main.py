"""MONAI Label app for whole-body CT: 104 structures, spleen and VISTA3D, with active learning."""

from __future__ import annotations

import logging
import os
import sys
from typing import Dict

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First

import lib.configs
from lib.activelearning import datastore_info, trigger
from lib.activelearning.handout import Exclusive, Handouts
from lib.activelearning.random_strategy import Random
from lib.activelearning.stratified_random import StratifiedRandom
from lib.batch.server_task import StudyBatchInfer
from lib.conf import Conf, ConfError, as_bool
from lib.corrections.hooks import LearningLoop
from lib.datastore.image_check import DEFAULT_MAX_VOXELS, check_ct_file
from lib.datastore.local import CheckedLocalDatastore
from lib.datastore.sessions import CheckedSessions
from lib.labels.mapping import segment_mapping
from lib.labels.saved import saved_segments
from lib.server import uploads
from lib.server.auth.context import require_for_write, signed_in_user
from lib.server.auth.rules import SAVE_INFERENCE_RESULT
from lib.server.errors import NotFoundError, check_id, check_session_id
from lib.server.infer_params import check_infer_params
from lib.server.infer_queue import InferQueue, default_workers, worker_devices
from lib.weights.checkpoints import write_training_checkpoints_atomically

logger = logging.getLogger(__name__)

# The strategy /info/ lists first, Slicer's default: stratified_random, because no model strategy
# beat it by the rule fixed before the shifted-site study (docs/active-learning.md, bench/results/
# active_learning_shifted_small_6mm_cpu.json); plain random lost to it in 4 of 5 pairs.
FIRST_STRATEGY = "stratified_random"

# MONAI Label tracks training runs in MLflow's file store, which MLflow 3 refuses unless allowed.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


class WholeBodyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.options = Conf(conf)
        if "monailabel.app" in sys.modules:  # under the server: an exposed start is refused before models load
            from lib.server.auth.install import access_mode

            access_mode(self.options)
        self.model_dir = self.options.path("model_dir", os.path.join(app_dir, "model"))
        available = lib.configs.CONFIGS
        names = self.options.list("models", list(available))
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ConfError(f"unknown model(s) {unknown} in --conf models; available: {', '.join(available)}")

        self.models = {}
        for name in names:
            config = available[name]()
            config.init(name, self.model_dir, conf, None)
            self.models[name] = config
        logger.info(f"Models: {list(self.models)}; weights and trained models in {self.model_dir}")

        # The request layer (lib/server/routes.py, lib/server/infer_queue.py; README "Several annotators").
        self.infer_workers = self.options.int("infer_workers", default_workers(), minimum=1)
        self.infer_queue = self.options.int("infer_queue", 8, minimum=0)
        self.infer_wait_s = self.options.float("infer_wait_s", 600.0, low=1.0)
        # MONAI Label 0.8.5's own handling, for comparison (bench/bench_load.py): every request on the event loop.
        self.inline_requests = self.options.bool("inline_requests", False)
        # Hostile input (docs/bad-input.md): request bodies, image headers, the server's private upload folder.
        self.max_upload_mb = self.options.int("max_upload_mb", 2048, minimum=1)
        self.max_voxels = self.options.int("max_voxels", DEFAULT_MAX_VOXELS, minimum=8)
        self.upload_dir = self.options.path("upload_dir", os.path.join(self.model_dir, "uploads"))
        # Correction records, model versions and their report (lib/corrections/, lib/versions/).
        self.learning_loop = LearningLoop()

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Whole-body CT",
            description="104 TotalSegmentator structures, spleen and VISTA3D for whole-body CT",
            version="0.1.0",
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        from monailabel.config import settings

        store = CheckedLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )
        store.max_voxels = self.max_voxels
        return store

    def _load_sessions(self, load=False):
        """Sessions hold one checked CT file each (lib/datastore/sessions.py)."""
        from monailabel.config import settings

        if not load:
            return None
        return CheckedSessions(settings.MONAI_LABEL_SESSION_PATH, settings.MONAI_LABEL_SESSION_EXPIRY, self.max_voxels)

    # --- remote datastore: a DICOMweb PACS (lib/pacs/; README "Hospital set-up") ---
    def init_remote_datastore(self) -> Datastore:
        """``--studies http(s)://.../dicom-web``: series from the PACS, labels back as DICOM SEG
        written in Python. Never downloads dcmqi (stock MONAI Label does, and crashes offline)."""
        from monailabel.config import settings

        from lib.pacs import setup as pacs_setup

        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
            return super().init_remote_datastore()
        model_labels = {name: dict(getattr(config, "labels", None) or {}) for name, config in self.models.items()}
        store = pacs_setup.create(self.studies, self.options, model_labels, "0.1.0")
        store.label_imported = self._label_imported
        if "monailabel.app" in sys.modules:
            # Under the server: OHIF's proxy to the PACS, kept to DICOMweb (Google's with its tokens too); a SEG
            # OHIF stores through it becomes the study's label at once.
            from lib.pacs import proxy as dicomweb_proxy

            dicomweb_proxy.install(sys.modules["monailabel.app"].app, on_stored=self._segs_stored)
        return store

    def _segs_stored(self, seg_series: list, user) -> None:
        try:
            self.datastore().import_stored(seg_series, user)
        except Exception as e:  # the SEG is in the PACS: it is imported at the next training instead
            logger.warning(f"SEG {', '.join(seg_series)} stored through the proxy, not imported yet: {getattr(e, 'detail', e)}")

    def _label_imported(self, image_id: str, saved_at) -> None:
        """A SEG from the PACS became a study's final label: a save like any other."""
        self.learning_loop.saved(self, image_id, saved_at)
        self._release_handout(image_id)

    def on_save_label(self, image_id, label_id):
        """The answer to a saved label says what each segment trains in each model (kept in the
        label's info too) and whether it reached the PACS or waits for it."""
        answer = super().on_save_label(image_id, label_id) or {}
        answer.update(self._segment_mapping(image_id))
        self.learning_loop.saved(self, image_id)  # before the hand-out, whose time it reads, is released
        self._release_handout(image_id)  # active learning: the study is free for others again
        upload_status = getattr(self.datastore(), "upload_status", None)
        if upload_status:
            answer["pacs"] = upload_status(image_id)
        return answer

    # --- end of remote datastore ---

    def _segment_mapping(self, image_id: str) -> dict:
        store = self.datastore()
        tag = getattr(store, "last_saved_tag", lambda _: None)(image_id) or DefaultLabelTag.FINAL
        segments = saved_segments(store.get_label_info(image_id, tag) or {})
        mappers = {name: t.map_segments for name, t in (self._trainers or {}).items() if hasattr(t, "map_segments")}
        mapping = segment_mapping(segments, mappers)
        store.update_label_info(image_id, tag, {"trains": mapping})
        return mapping

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, config in self.models.items():
            tasks = config.infer()
            infers.update(tasks if isinstance(tasks, dict) else {name: tasks})
        return infers

    def init_batch_infer(self):
        return StudyBatchInfer()  # per study, failures answered with their reason (lib/batch/server_task.py)

    def init_trainers(self) -> Dict[str, TrainTask]:
        if self.options.bool("skip_trainers", False):
            return {}
        write_training_checkpoints_atomically()
        trainers: Dict[str, TrainTask] = {}
        for name, config in self.models.items():
            tasks = config.trainer()
            trainers.update(tasks if isinstance(tasks, dict) else {name: tasks} if tasks else {})
        return trainers

    # --- active learning: strategies, scoring, hand-outs (lib/activelearning/; README "Active learning") ---
    def init_strategies(self) -> Dict[str, Strategy]:
        """``random``, ``stratified_random``, ``first`` and the models' own (``diversity_then_class_entropy``, ``diversity``,
        ``class_entropy``, ``uncertainty``), each handing out only studies that no other client is
        annotating. ``FIRST_STRATEGY`` is listed first: Slicer's "Next Sample" uses it unless the
        annotator picks another."""
        self.handouts = Handouts(
            self.options.float("al_lock_minutes", 30.0, low=0.0), path=os.path.join(self.model_dir, "handouts.json")
        )
        chosen: Dict[str, Strategy] = {"random": Random(), "stratified_random": StratifiedRandom(), "first": First()}
        for config in self.models.values():
            chosen.update(self._by_name(config.strategy(), config.name))
        ordered = {name: chosen[name] for name in (FIRST_STRATEGY,) if name in chosen} | chosen
        return {name: Exclusive(strategy, self.handouts) for name, strategy in ordered.items()}

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        methods: Dict[str, ScoringMethod] = {}
        for config in self.models.values():
            methods.update(self._by_name(config.scoring_method(), config.name))
        return methods

    def async_scoring(self, method, params=None):
        """Scores after training, next-sample requests and start-up, only when a study needs one."""
        return trigger.async_scoring(self, method, params)

    def datastore(self) -> Datastore:
        """In the server process, re-read ``datastore_v2.json`` when another process (a scoring task)
        changed it, so scores show in ``/datastore`` and the server's next write keeps them."""
        store = super().datastore()
        if getattr(self, "_server_mode", False):
            datastore_info.reload(store)
        return store

    def _release_handout(self, image_id):
        handouts = getattr(self, "handouts", None)
        if handouts:
            handouts.release(image_id)

    @staticmethod
    def _by_name(tasks, name: str) -> dict:
        """A config's ``strategy()`` / ``scoring_method()`` answer (None, one task, or name -> task) as a dict."""
        if tasks is None:
            return {}
        return dict(tasks) if isinstance(tasks, dict) else {name: tasks}

    # --- end of active learning ---

    def on_init_complete(self):
        # Imported here: the FastAPI app exists only when running under the server.
        from monailabel.app import app as fastapi_app

        from lib.batch import server_request as batch_requests
        from lib.corrections import hooks as learning_loop
        from lib.heads import routes as head_routes
        from lib.ohif import config_route as ohif_config
        from lib.server import body_limit, routes, scoring_requests, train_requests, training_runs, unserved
        from lib.server import errors as http_errors
        from lib.server.auth import install as access_control

        http_errors.install(fastapi_app)
        body_limit.install(fastapi_app, self.max_upload_mb * 1024 * 1024)
        uploads.install(fastapi_app, self.upload_dir)
        head_routes.install(fastapi_app, self._infers)
        train_requests.install(self)
        scoring_requests.install(self)
        training_runs.install()
        batch_requests.install(self)
        learning_loop.install(fastapi_app, self)
        if not self.inline_requests:
            routes.install(fastapi_app, InferQueue(worker_devices(self.infer_workers), self.infer_queue, self.infer_wait_s))
        unserved.install(fastapi_app, self)  # in front of the request layer's routes
        ohif_config.install(fastapi_app)  # in front of the request layer's copy of the stock /ohif/ route
        # Last: it checks every route installed before it, and refuses to start an exposed server.
        access_control.install(fastapi_app, self.options, self.model_dir)
        super().on_init_complete()

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise NotFoundError(f"unknown model '{model}'; available: {', '.join(self._infers)}")
        check_infer_params(request)  # 422 before anything is read or computed
        save = as_bool(request.get("save_label", False), "save_label")
        if save:  # /infer is a user's route; saving its result as a label is an annotator's right, as everywhere
            require_for_write(SAVE_INFERENCE_RESULT, "save an inference result as a label ('save_label')")
        image = request.get("image")
        stored = False
        if uploads.created_for_this_request(image):
            check_ct_file(image, self.max_voxels)  # what an upload to the datastore must be (422)
        elif isinstance(image, str) and not self._session_image(request):
            check_id(image, "image id")
            if not (datastore or self.datastore()).get_image_uri(image):
                raise NotFoundError(f"image '{image}' not found in the datastore")
            stored = True
        result = super().infer({**request, "save_label": False}, datastore)
        if stored:  # the prediction an annotator of this study starts from
            self.learning_loop.served(self, image, request, result)
        if save and stored and result.get("file") and os.path.exists(result["file"]):
            result["label"], result["tag"] = self._save_result(image, request, result, datastore or self.datastore())
        return result

    def _save_result(self, image_id: str, request: dict, result: dict, datastore: Datastore) -> tuple[str, str]:
        """``save_label``: the result saved as a label, as MONAI Label saves it (tag ``label_tag``, default
        ``original``), attributed to the signed-in user; the study's hand-out ends as with any saved label."""
        tag = request.get("label_tag") or DefaultLabelTag.ORIGINAL
        info = {"model": request.get("model"), "params": result.get("params")}
        user = signed_in_user()
        if user:
            info["user"] = user
        label_id = datastore.save_label(image_id, result["file"], tag, info)
        logger.info(f"Inference result of {request.get('model')} saved as label '{tag}' of {image_id}" + (f" by {user}" if user else ""))
        self.learning_loop.saved(self, image_id)  # a final label saved this way gets its correction record too
        self._release_handout(image_id)
        return label_id, tag

    def _session_image(self, request) -> bool:
        """An image given as a path is only trusted where the server put it for this request: its upload
        (above) or the image of the session it names (checked when the session was made). Anything else is
        a datastore id, so a client cannot make the server read /etc/passwd, a study outside the datastore,
        or another client's upload."""
        session, sessions = request.get("session"), self.sessions()
        name = session.get("name") if isinstance(session, dict) else None
        if not name or not sessions:
            return False
        check_session_id(name)
        found = sessions.get_session(name, update_ts=False)
        return bool(found) and os.path.realpath(found.image) == os.path.realpath(str(request.get("image")))

    def next_sample(self, request):
        """The chosen study by id; its path on the server's disk is no client's business (Slicer downloads
        the study by id when it has no such file)."""
        result = super().next_sample(request)
        result.pop("path", None)
        return result

    def train(self, request):
        if request.get("model") not in self._trainers:
            raise NotFoundError(f"unknown model '{request.get('model')}'; trainers: {', '.join(self._trainers)}")
        return super().train(request)

    def bundle_path(self, model):
        # AsyncTask.run calls this before it starts a training process: the last moment to refuse
        # an unknown model with 404 instead of a task that fails in the background.
        if model and model not in self._trainers and model not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model '{model}'; trainers: {', '.join(self._trainers)}")
        return None
