"""Labels from the PACS: before training, an image whose newest SEG in the PACS is newer than the label
kept here (saved on another workstation, or none here) gets that SEG as its label; a SEG stored through the
server's DICOMweb proxy (OHIF's "store segmentation") becomes its study's label at once. Either way the import
is a save: ``label_imported`` (set by the app) gets its correction record made."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Callable, Dict, Iterable, Optional

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from lib.pacs.series import download_series, series_meta

logger = logging.getLogger(__name__)


class SegImport:
    """Part of ``PacsDatastore`` (``self._connection``, ``self._queue``, ``self._seg_refs``, ``self._cached``
    and the datastore's images and labels)."""

    # (image id, when the SEG was made as epoch seconds or None) after a SEG became a study's final label
    label_imported: Optional[Callable[[str, Optional[float]], None]] = None

    def _seg_series(self) -> Dict[str, tuple[Optional[str], float]]:
        """SEG series in the PACS -> (the image series it references, when it was made as epoch
        seconds); the reference is read from the metadata once per SEG (SEGs do not change).
        A model's output stored under another tag than final references nothing here."""
        from lib.pacs.seg_tags import is_training_label

        def compute():
            with self._connection.answering("listing the segmentations"):
                segs = self._connection.client.search_for_series(
                    search_filters={"Modality": "SEG"}, fields=["SeriesDate", "SeriesTime"], get_remaining=True
                )
            result = {}
            for item in segs:
                ds = Dataset.from_json(item)
                seg_uid = str(ds.SeriesInstanceUID)
                if seg_uid not in self._seg_refs:
                    with self._connection.answering(f"reading segmentation {seg_uid}"):
                        meta = self._connection.client.retrieve_series_metadata(str(ds.StudyInstanceUID), seg_uid)
                    first = Dataset.from_json(meta[0]) if meta else Dataset()
                    ref = first.get("ReferencedSeriesSequence") if is_training_label(first) else None
                    self._seg_refs[seg_uid] = str(ref[0].SeriesInstanceUID) if ref else None
                result[seg_uid] = (self._seg_refs[seg_uid], _dicom_epoch(ds.get("SeriesDate"), ds.get("SeriesTime")))
            return result

        return self._cached("segs", compute)

    def _download_labeled_data(self) -> None:
        """Labels saved here and not yet uploaded always stay."""
        try:
            segs = self._seg_series()
            images = set(self.list_images())
        except HTTPException as e:
            logger.warning(f"{e.detail}: training uses the labels kept on this server")
            return
        newest: Dict[str, tuple[float, str]] = {}
        for seg_uid, (image_id, made) in segs.items():
            if image_id in images and made >= newest.get(image_id, (-1.0, ""))[0]:
                newest[image_id] = (made, seg_uid)
        for image_id, (made, seg_uid) in newest.items():
            label = self._datastore.label(image_id, DefaultLabelTag.FINAL)
            info = label.info if label else {}
            if label and (self._queue.has_pending(image_id) or info.get("SeriesInstanceUID") == seg_uid):
                continue
            if label and made <= float(info.get("ts", 0)):
                continue
            try:
                self._import_seg(image_id, seg_uid, made)
            except HTTPException as e:
                logger.warning(f"label of {image_id} not imported from SEG {seg_uid}: {e.detail}")

    def import_stored(self, seg_uids: Iterable[str], stored_by: Optional[str] = None) -> list[str]:
        """SEG series just stored in the PACS (through the proxy, by ``stored_by``): each that is a label to
        train on and references a study of this datastore becomes that study's final label now, not at the next
        training. A label saved here and still waiting for its upload is newer and stays. Returns the studies."""
        with self._lock:
            self._cache.pop("segs", None)
        segs = self._seg_series()
        images = set(self.list_images())
        imported = []
        for seg_uid in seg_uids:
            image_id, made = segs.get(seg_uid, (None, 0.0))
            if image_id not in images or self._queue.has_pending(image_id):
                continue
            self._import_seg(image_id, seg_uid, made, stored_by)
            imported.append(image_id)
        return imported

    def _import_seg(self, image_id: str, seg_uid: str, made: float = 0.0, stored_by: Optional[str] = None) -> None:
        import pydicom
        import SimpleITK as sitk

        from lib.pacs.seg import read_seg

        image_uri = self.get_image_uri(image_id)
        meta = series_meta(self._connection, seg_uid)
        with tempfile.TemporaryDirectory() as tmp:
            seg_dir = download_series(self._connection, str(meta.StudyInstanceUID), seg_uid, os.path.join(tmp, "seg"))
            seg_file = os.path.join(seg_dir, os.listdir(seg_dir)[0])
            sources = self.source_files(image_id)
            uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in sources]
            labelmap, segments = read_seg(seg_file, uids)
            creator = str(pydicom.dcmread(seg_file, stop_before_pixels=True).get("ContentCreatorName", "") or "")
            reference = sitk.ReadImage(image_uri)
            label = sitk.GetImageFromArray(labelmap.astype(np.uint8 if labelmap.max() < 256 else np.uint16))
            label.CopyInformation(reference)
            out = os.path.join(tmp, f"{image_id}.nii.gz")
            sitk.WriteImage(label, out, True)
            info = {
                "label_info": [segment.as_info() for segment in segments],
                "SeriesInstanceUID": seg_uid,
                "Modality": "SEG",
            }
            if stored_by or creator:  # who painted it: the signed-in user who stored it, else the SEG's creator
                info["user"] = stored_by or creator
            self._store_label(image_id, out, DefaultLabelTag.FINAL, info)
        logger.info(f"Label of {image_id} imported from SEG {seg_uid}")
        if self.label_imported:
            self.label_imported(image_id, made or None)


def _dicom_epoch(date, time_) -> float:
    """DICOM DA + TM (local time) -> epoch seconds; 0 when missing."""
    import datetime

    date = str(getattr(date, "value", date) or "").strip()
    whole, _, fraction = str(getattr(time_, "value", time_) or "").strip().partition(".")
    if len(date) != 8:
        return 0.0
    try:  # the fraction counts: a correction's seconds run from an answer timed to the microsecond
        made = datetime.datetime.strptime(date + whole.ljust(6, "0")[:6], "%Y%m%d%H%M%S").timestamp()
        return made + (float(f"0.{fraction[:6]}") if fraction.isdigit() else 0.0)
    except ValueError:
        return 0.0
