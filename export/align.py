"""Software de-jitter: register a frame to the training reference and warp it once (no torch).

Registration runs on a small grayscale copy (the reference's grid, long side = work_size): windowed phase
correlation for the shift, a bounded search over angles for rigid mode (optionally refined by OpenCV ECC).
The estimate is made in the stretched work grid - the same stretched view the model gets - and mapped back
to the full frame as one affine warp, so frames of any size or aspect ratio can be registered. Every search
is bounded; a frame that does not match the reference within the bounds is reported as a failure with a
reason and returned unchanged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from linesight.config.frame import AlignInfo
from linesight.errors import DataError
from linesight.export.images import check_image, to_gray_unit

log = logging.getLogger(__name__)

_MAX_REFERENCE_IMAGES = 256  # the median is stable long before this; bounds fit-time memory
_ANGLE_STEP_DEG = 1.0  # coarse grid of the rigid search; refined by a parabola through the best three
_REFINE_DEG = 0.25  # full-resolution angle refinement step
_ANGLE_TOLERANCE_DEG = 0.1  # measurement precision: a part turned exactly max_angle_deg is still accepted
_OUT_OF_BOUNDS_RATIO = 1.5  # a peak outside the bounds this much stronger than the best inside = out of bounds
_ECC_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 60, 1e-5)


@dataclass(frozen=True)
class AlignResult:
    """dx, dy: displacement of the frame's content from the reference in full-frame pixels (x right, y down);
    angle_deg: its rotation (OpenCV sense: positive = counter-clockwise on screen). The image is aligned
    only when ok; otherwise it is the input unchanged and `reason` says why."""

    image: np.ndarray
    dx: float
    dy: float
    angle_deg: float
    quality: float
    ok: bool
    reason: str | None
    matrix: np.ndarray | None = None  # 2x3: aligned pixel p shows frame pixel matrix @ (p, 1); None = unaligned


def _work_gray(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize first (in the image's own dtype, area filter when shrinking), then convert: cheap on big frames."""
    h, w = image.shape[:2]
    if (h, w) != shape:
        small = image if image.dtype != np.float32 else np.clip(image, 0.0, 1.0)
        if small.ndim == 3 and small.shape[2] == 4:
            small = small[:, :, :3]
        interp = cv2.INTER_AREA if h * w > shape[0] * shape[1] else cv2.INTER_LINEAR
        image = cv2.resize(np.ascontiguousarray(small), (shape[1], shape[0]), interpolation=interp)
    check_image(image)
    return to_gray_unit(image)


def _fft_size(n: int) -> int:
    """n rounded up to a size with only small prime factors: an awkward size (e.g. 213 = 3 x 71) costs ~2x."""
    return int(cv2.getOptimalDFTSize(max(16, n)))


def work_shape(images: list[np.ndarray], work_size: int) -> tuple[int, int]:
    """(h, w) of the work grid: the images' median aspect ratio, long side work_size, FFT-friendly sizes."""
    aspect = float(np.median([im.shape[0] / im.shape[1] for im in images]))
    if aspect >= 1:
        return _fft_size(work_size), _fft_size(round(work_size / aspect))
    return _fft_size(round(work_size * aspect)), _fft_size(work_size)


def make_reference(images: list[np.ndarray], info: AlignInfo) -> np.ndarray:
    """Median of the (already photometrically normalised) training images on the work grid, uint16 gray.

    The median keeps the common geometry (part edges, fixtures) and drops each part's own texture and
    defects. At most 256 images, evenly spread, are used.
    """
    if not images:
        raise DataError("alignment reference: no training images given")
    step = max(1, len(images) // _MAX_REFERENCE_IMAGES)
    chosen = images[::step][:_MAX_REFERENCE_IMAGES]
    shape = work_shape(chosen, info.work_size)
    stack = np.stack([(_work_gray(im, shape) * 65535.0 + 0.5).astype(np.uint16) for im in chosen])
    ref = np.median(stack, axis=0).astype(np.uint16)
    if float(ref.std()) < 1e-3 * 65535:
        raise DataError("alignment reference is flat (the training images share no structure to register on); "
                        "set frame.align.mode: none")
    log.info("alignment reference", extra={"images": len(chosen), "shape": list(shape)})
    return ref


def _zncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def _highpass(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Structure only: lighting gradients shared by unrelated images must not count as a match."""
    return gray - cv2.GaussianBlur(gray, (0, 0), sigma)


def _subpixel(surface: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Parabolic peak interpolation along each axis (the surface is circular)."""
    h, w = surface.shape

    def vertex(m: float, c: float, p: float) -> float:
        den = m - 2 * c + p
        return float(np.clip(0.5 * (m - p) / den, -0.5, 0.5)) if abs(den) > 1e-12 else 0.0

    c = surface[y, x]
    oy = vertex(surface[(y - 1) % h, x], c, surface[(y + 1) % h, x])
    ox = vertex(surface[y, (x - 1) % w], c, surface[y, (x + 1) % w])
    return y + oy, x + ox


class _Correlator:
    """Windowed phase correlation against one reference on one grid, peak search bounded to max shift."""

    def __init__(self, ref: np.ndarray, max_shift_frac: float):
        self.ref = ref
        self.shape = ref.shape
        h, w = self.shape
        self.window = cv2.createHanningWindow((w, h), cv2.CV_32F)
        self.center = ((w - 1) / 2.0, (h - 1) / 2.0)
        yy = np.abs(np.arange(h) - h // 2)[:, None]
        xx = np.abs(np.arange(w) - w // 2)[None, :]
        self.in_bounds = (yy <= max_shift_frac * h) & (xx <= max_shift_frac * w)

    def rotation(self, angle: float) -> np.ndarray:
        return cv2.getRotationMatrix2D(self.center, angle, 1.0)

    def spectrum(self, image: np.ndarray) -> np.ndarray:
        return np.fft.rfft2((image - image.mean()) * self.window)

    def ref_spectrum(self, angle: float) -> np.ndarray:
        """Conjugate spectrum of the reference rotated by angle (what a frame rotated by angle matches)."""
        ref = self.ref
        if angle != 0.0:
            ref = cv2.warpAffine(ref, self.rotation(angle), (ref.shape[1], ref.shape[0]),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return np.conj(self.spectrum(ref))

    def peak(self, frame_spec: np.ndarray, ref_spec: np.ndarray) -> tuple[float, float, float, float]:
        """(peak value inside the bounds, dy, dx, strongest value outside the bounds)."""
        cross = frame_spec * ref_spec
        cross /= np.maximum(np.abs(cross), 1e-12)
        surface = np.fft.fftshift(np.fft.irfft2(cross, s=self.shape))
        inside = np.where(self.in_bounds, surface, -np.inf)
        y, x = np.unravel_index(int(np.argmax(inside)), surface.shape)
        outside = float(np.max(np.where(self.in_bounds, -np.inf, surface)))
        sy, sx = _subpixel(surface, int(y), int(x))
        h, w = self.shape
        return float(surface[y, x]), sy - h // 2, sx - w // 2, outside


class Aligner:
    """Registers frames to one reference. Build it once per bundle: reference spectra are precomputed.

    Rigid mode searches the angle on a half-resolution grid (1 degree steps, parabolic refinement), then
    measures the shift at full work resolution against the reference turned by that angle.
    """

    def __init__(self, info: AlignInfo, reference: np.ndarray):
        if info.mode == "none":
            raise ValueError("Aligner needs align.mode translation or rigid")
        self.info = info
        check_image(reference)
        self.ref = to_gray_unit(reference)
        self.shape = self.ref.shape
        h, w = self.shape
        self.max_dy = info.max_shift_frac * h
        self.max_dx = info.max_shift_frac * w
        self.full = _Correlator(self.ref, info.max_shift_frac)
        self.ref_spec0 = self.full.ref_spectrum(0.0)
        self.angles: list[float] = [0.0]
        if info.mode == "rigid" and info.max_angle_deg > 0:
            n = int(np.ceil(info.max_angle_deg / _ANGLE_STEP_DEG)) + 1  # one step beyond: interpolable
            self.angles = [float(a) for a in np.linspace(-n * _ANGLE_STEP_DEG, n * _ANGLE_STEP_DEG, 2 * n + 1)]
            half = (_fft_size(h // 2), _fft_size(w // 2)) if min(h, w) >= 128 else (h, w)
            small = cv2.resize(self.ref, (half[1], half[0]), interpolation=cv2.INTER_AREA) if half != (h, w) \
                else self.ref
            self.coarse = _Correlator(small, info.max_shift_frac)
            self.coarse_specs = [self.coarse.ref_spectrum(a) for a in self.angles]
        # Valid region for quality: away from borders that shifts/rotations fill with reflected content.
        my = min(int(np.ceil(self.max_dy)) + 1, h // 4)
        mx = min(int(np.ceil(self.max_dx)) + 1, w // 4)
        self.inner = (slice(my, h - my), slice(mx, w - mx))
        self.hp_sigma = max(h, w) / 64.0
        self.ref_hp_inner = _highpass(self.ref, self.hp_sigma)[self.inner]

    def quality(self, gray_aligned: np.ndarray) -> float:
        """Normalised cross-correlation of high-passed images over the inner region (1 = same structure)."""
        return _zncc(_highpass(gray_aligned, self.hp_sigma)[self.inner], self.ref_hp_inner)

    def _search_angle(self, gray: np.ndarray) -> tuple[float, str | None]:
        small = gray if self.coarse.shape == self.shape else cv2.resize(
            gray, (self.coarse.shape[1], self.coarse.shape[0]), interpolation=cv2.INTER_AREA)
        spec = self.coarse.spectrum(small)
        values = [self.coarse.peak(spec, s)[0] for s in self.coarse_specs]
        best = int(np.argmax(values))
        angle = self.angles[best]
        if best in (0, len(self.angles) - 1):
            return angle, f"rotation at the search bound ({angle:+.1f} deg, max_angle_deg {self.info.max_angle_deg})"
        m, c, p = values[best - 1], values[best], values[best + 1]
        den = m - 2 * c + p
        angle += (float(np.clip(0.5 * (m - p) / den, -0.5, 0.5)) if abs(den) > 1e-12 else 0.0) * _ANGLE_STEP_DEG
        if abs(angle) > self.info.max_angle_deg + _ANGLE_STEP_DEG / 2:  # refined at full resolution next
            return angle, f"rotation {angle:+.1f} deg beyond max_angle_deg {self.info.max_angle_deg}"
        return angle, None

    def estimate(self, gray: np.ndarray) -> tuple[np.ndarray, float, float, float, str | None]:
        """Work-grid estimate: (M ref->frame 2x3, dx, dy, angle, failure reason or None)."""
        angle = 0.0
        if len(self.angles) > 1:
            angle, reason = self._search_angle(gray)
            if reason is not None:
                return np.eye(2, 3), 0.0, 0.0, angle, reason
        spec = self.full.spectrum(gray)
        if len(self.angles) > 1:  # refine the coarse angle at full resolution: parabola through angle +/- delta
            trio = [self.full.peak(spec, self.full.ref_spectrum(angle + d)) for d in (-_REFINE_DEG, 0.0, _REFINE_DEG)]
            m, c, p = (t[0] for t in trio)
            den = m - 2 * c + p
            off = float(np.clip(0.5 * (m - p) / den, -1.0, 1.0)) if den < -1e-12 else 0.0
            angle += off * _REFINE_DEG
            # the shift barely depends on an angle error this small (rotation is about the centre): reuse it
            value, dy, dx, outside = trio[1]
            if abs(angle) > self.info.max_angle_deg + _ANGLE_TOLERANCE_DEG:
                return np.eye(2, 3), dx, dy, angle, f"rotation {angle:+.1f} deg beyond max_angle_deg " \
                                                    f"{self.info.max_angle_deg}"
        else:
            value, dy, dx, outside = self.full.peak(spec, self.ref_spec0)
        if outside > _OUT_OF_BOUNDS_RATIO * value:
            return np.eye(2, 3), dx, dy, angle, "shift out of bounds (strongest match lies beyond max_shift_frac)"
        if abs(dx) > self.max_dx - 1 or abs(dy) > self.max_dy - 1:
            return np.eye(2, 3), dx, dy, angle, (f"shift at the search bound (dx {dx:+.1f}, dy {dy:+.1f} work px; "
                                                 f"max_shift_frac {self.info.max_shift_frac})")
        matrix = self.full.rotation(angle)
        matrix[:, 2] += (dx, dy)
        if self.info.method == "ecc":
            motion = cv2.MOTION_EUCLIDEAN if self.info.mode == "rigid" else cv2.MOTION_TRANSLATION
            warp = matrix.astype(np.float32)
            try:
                _, warp = cv2.findTransformECC(self.ref, gray, warp, motion, _ECC_CRITERIA, None, 3)
            except cv2.error:
                return np.eye(2, 3), dx, dy, angle, "ECC did not converge"
            matrix = warp.astype(np.float64)
            angle = float(np.degrees(np.arctan2(matrix[0, 1], matrix[0, 0])))
            base = self.full.rotation(angle)
            dx, dy = float(matrix[0, 2] - base[0, 2]), float(matrix[1, 2] - base[1, 2])
            too_far = abs(dx) > self.max_dx or abs(dy) > self.max_dy
            if too_far or abs(angle) > self.info.max_angle_deg + _ANGLE_TOLERANCE_DEG:
                return np.eye(2, 3), dx, dy, angle, "ECC result beyond the search bounds"
        return matrix, dx, dy, angle, None

    def __call__(self, image: np.ndarray) -> AlignResult:
        check_image(image)
        h, w = image.shape[:2]
        gray = _work_gray(image, self.shape)
        matrix, dx, dy, angle, reason = self.estimate(gray)
        sy, sx = h / self.shape[0], w / self.shape[1]
        if reason is None:
            aligned_work = cv2.warpAffine(gray, matrix, (self.shape[1], self.shape[0]),
                                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                          borderMode=cv2.BORDER_REFLECT)
            quality = self.quality(aligned_work)
            if quality < self.info.min_quality:
                reason = f"match quality {quality:.2f} below min_quality {self.info.min_quality}"
        else:
            quality = self.quality(gray)
        if reason is not None:
            log.debug("alignment failed", extra={"reason": reason, "quality": quality})
            return AlignResult(image, dx * sx, dy * sy, angle, quality, False, reason)
        # Work grid -> full frame: M_full = S M S^-1 with S = diag(sx, sy) (pixel-centre convention).
        s = np.diag([sx, sy])
        full = np.empty((2, 3))
        full[:, :2] = s @ matrix[:, :2] @ np.linalg.inv(s)
        c_work = np.array([(sx - 1) / 2.0, (sy - 1) / 2.0])  # centre offsets of the resize mapping
        full[:, 2] = s @ matrix[:, 2] + c_work - full[:, :2] @ c_work
        out = cv2.warpAffine(image, full, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT).reshape(image.shape)
        return AlignResult(out, dx * sx, dy * sy, angle, quality, True, None, full)
