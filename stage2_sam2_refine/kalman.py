"""Constant-velocity Kalman filter on bounding boxes, the motion model of SAMURAI.

SAMURAI (arXiv 2411.11922, ``yangchris11/samurai``) tracks each object's box with a linear Kalman
filter whose state is ``(cx, cy, a, h, vcx, vcy, va, vh)``: box centre, aspect ratio ``a = w / h``,
height, and their per-frame velocities. The box ``(cx, cy, a, h)`` is observed directly. Noise
standard deviations scale with the box height, so the filter behaves the same at any resolution;
the aspect ratio gets small fixed deviations. The values below are those of SAMURAI's
``sam2/utils/kalman_filter.py`` (inherited from the DeepSORT/ByteTrack trackers).

Boxes at the interface are ``[4]`` float64 arrays ``(x0, y0, x1, y1)`` in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_DIM = 8  # (cx, cy, a, h) and their velocities
MEASUREMENT_DIM = 4  # (cx, cy, a, h)
MIN_BOX_HEIGHT = 1.0  # a zero-height box is measured as 1 px high (SAMURAI's guard)


@dataclass(frozen=True)
class KalmanNoise:
    """Noise model of the filter; every default is SAMURAI's ``KalmanFilter`` value."""

    # 1/20: std of the centre and height, as a fraction of the box height (process and measurement)
    position_weight: float = 1.0 / 20.0
    # 1/160: std of the centre and height velocities, as a fraction of the box height
    velocity_weight: float = 1.0 / 160.0
    # 1e-2: process (and initial) std of the aspect ratio
    aspect_std: float = 1e-2
    # 1e-5: process (and initial) std of the aspect-ratio velocity
    aspect_velocity_std: float = 1e-5
    # 1e-1: measurement std of the aspect ratio
    aspect_measurement_std: float = 1e-1
    # 2: the initial position std is this many times the process one
    initial_position_factor: float = 2.0
    # 10: the initial velocity std is this many times the process one
    initial_velocity_factor: float = 10.0


def xyxy_to_xyah(box: np.ndarray) -> np.ndarray:
    """``(x0, y0, x1, y1)`` -> ``(cx, cy, w / h, h)``; both ``[4]`` float64.

    A box of zero height is measured with height ``MIN_BOX_HEIGHT`` (as SAMURAI does).
    """
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    height = y1 - y0
    if height <= 0:
        height = MIN_BOX_HEIGHT
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / height, height])


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """``(cx, cy, a, h)`` -> ``(x0, y0, x1, y1)``; both ``[4]`` float64."""
    cx, cy, aspect, height = np.asarray(xyah, dtype=np.float64)
    half_w, half_h = aspect * height / 2, height / 2
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])


def _constant_velocity_matrices() -> tuple[np.ndarray, np.ndarray]:
    """Transition ``[8, 8]`` (one frame per step) and observation ``[4, 8]`` matrices."""
    transition = np.eye(STATE_DIM)
    transition[:MEASUREMENT_DIM, MEASUREMENT_DIM:] = np.eye(MEASUREMENT_DIM)
    observation = np.eye(MEASUREMENT_DIM, STATE_DIM)
    return transition, observation


class KalmanBoxFilter:
    """One object's box track: ``initiate`` once, then ``predict`` every frame, ``update`` on a
    trusted measurement.

    State: ``mean`` ``[8]`` and ``covariance`` ``[8, 8]``, float64; ``None`` until ``initiate``.
    """

    def __init__(self, noise: KalmanNoise | None = None) -> None:
        self.noise = noise if noise is not None else KalmanNoise()
        self._transition, self._observation = _constant_velocity_matrices()
        self.mean: np.ndarray | None = None
        self.covariance: np.ndarray | None = None

    @property
    def initialized(self) -> bool:
        """Whether ``initiate`` has been called."""
        return self.mean is not None

    @property
    def box(self) -> np.ndarray:
        """Current box estimate ``(x0, y0, x1, y1)`` ``[4]`` float64."""
        self._require_state()
        return xyah_to_xyxy(self.mean[:MEASUREMENT_DIM])

    def initiate(self, box: np.ndarray) -> None:
        """Start the track at ``box`` ``[4]`` xyxy with zero velocity."""
        measurement = xyxy_to_xyah(box)
        height = measurement[3]
        position, velocity = self._std(height)
        position *= self.noise.initial_position_factor
        velocity *= self.noise.initial_velocity_factor
        # the aspect-ratio terms of the initial covariance are not scaled
        position[2], velocity[2] = self.noise.aspect_std, self.noise.aspect_velocity_std
        self.mean = np.concatenate([measurement, np.zeros(MEASUREMENT_DIM)])
        self.covariance = np.diag(np.square(np.concatenate([position, velocity])))

    def predict(self) -> np.ndarray:
        """Advance the state by one frame; returns the predicted box ``[4]`` xyxy."""
        self._require_state()
        position, velocity = self._std(self.mean[3])
        process_cov = np.diag(np.square(np.concatenate([position, velocity])))
        self.mean = self._transition @ self.mean
        self.covariance = self._transition @ self.covariance @ self._transition.T + process_cov
        return self.box

    def update(self, box: np.ndarray) -> np.ndarray:
        """Correct the state with the measured ``box`` ``[4]`` xyxy; returns the new estimate."""
        self._require_state()
        measurement = xyxy_to_xyah(box)
        projected_mean, projected_cov = self._project()
        # gain = P H^T S^-1, computed as solve(S, H P)^T since S and P are symmetric
        gain = np.linalg.solve(projected_cov, self._observation @ self.covariance).T
        self.mean = self.mean + gain @ (measurement - projected_mean)
        self.covariance = self.covariance - gain @ projected_cov @ gain.T
        return self.box

    def _project(self) -> tuple[np.ndarray, np.ndarray]:
        """Predicted measurement ``[4]`` and its covariance ``[4, 4]`` (with measurement noise)."""
        height = self.mean[3]
        std = np.full(MEASUREMENT_DIM, self.noise.position_weight * height)
        std[2] = self.noise.aspect_measurement_std
        mean = self._observation @ self.mean
        cov = self._observation @ self.covariance @ self._observation.T
        return mean, cov + np.diag(np.square(std))

    def _std(self, height: float) -> tuple[np.ndarray, np.ndarray]:
        """Process noise std ``[4]`` of the position part and ``[4]`` of the velocity part."""
        position = np.full(MEASUREMENT_DIM, self.noise.position_weight * height)
        velocity = np.full(MEASUREMENT_DIM, self.noise.velocity_weight * height)
        position[2], velocity[2] = self.noise.aspect_std, self.noise.aspect_velocity_std
        return position, velocity

    def _require_state(self) -> None:
        if self.mean is None:
            raise RuntimeError("KalmanBoxFilter used before initiate()")
