"""MONAI Label app for whole-body CT: 104 structures, spleen and VISTA3D, with active learning."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Dict

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import lib.configs
from lib.conf import Conf, ConfError
from lib.datastore import CheckedLocalDatastore
from lib.http_errors import NotFoundError, check_id

logger = logging.getLogger(__name__)

# MONAI Label tracks training runs in MLflow's file store, which MLflow 3 refuses unless allowed.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


class WholeBodyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.options = Conf(conf)
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

        return CheckedLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, config in self.models.items():
            tasks = config.infer()
            infers.update(tasks if isinstance(tasks, dict) else {name: tasks})
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        if self.options.bool("skip_trainers", False):
            return {}
        trainers = {name: config.trainer() for name, config in self.models.items()}
        return {name: t for name, t in trainers.items() if t}

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def on_init_complete(self):
        # Imported here: the FastAPI app exists only when running under the server.
        from monailabel.app import app as fastapi_app

        from lib import http_errors

        http_errors.install(fastapi_app)
        super().on_init_complete()

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise NotFoundError(f"unknown model '{model}'; available: {', '.join(self._infers)}")
        image = request.get("image")
        if isinstance(image, str) and not self._written_by_server(image):
            check_id(image, "image id")
            if not (datastore or self.datastore()).get_image_uri(image):
                raise NotFoundError(f"image '{image}' not found in the datastore")
        return super().infer(request, datastore)

    def _written_by_server(self, image: str) -> bool:
        """An image given as a path is only trusted where the server itself put it: the temp file of
        an upload to /infer, or a session's image. Anything else is a datastore id, so a client
        cannot make the server read /etc/passwd or a study outside the datastore."""
        if not (os.path.isabs(image) and os.path.exists(image)):
            return False
        real = os.path.realpath(image)
        if os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()):
            return os.path.isfile(real) and re.fullmatch(r"tmp[a-z0-9_]{8}(\.[A-Za-z0-9]+)*", os.path.basename(real)) is not None
        sessions = self.sessions()
        return bool(sessions) and real.startswith(os.path.realpath(sessions.store_path) + os.sep)

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
