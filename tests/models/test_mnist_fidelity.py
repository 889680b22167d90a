"""DeepVID on real MNIST: students distilled from VAE neighbours are faithful to the teacher.

Models are trained here on MNIST test[:8000] with a reduced budget (teacher 2 epochs, VAE 4
epochs: ~1 min on 2 cores); explanations are of 24 images of test[8000:].
Measured with this setup (seed 0) and today's default (512 neighbours, the smoothness chosen
per image): held-out top-1 agreement 0.923 and KL 0.067 nats, mean over the 24 instances. The
former default (`FIXED_SMOOTH`: 1,024 neighbours, one smoothness) gave 0.930 and 0.044, the
first DeepVID default (Adam on the KD loss) 0.949 and 0.018: each step bought stability or truth
to the evidence with a little fit (docs/design/stable-default.md). (The fully trained VAE's
neighbours are more varied and harder to fit: see the README.) The floors below sit a little
under the measurement.
"""

import dataclasses

import jax
import numpy as np
import pytest

from deepvid_jax.data import sources as data
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.models import train
from deepvid_jax.models.networks import TeacherConfig, VAEConfig, teacher_apply_for

TOP1_FLOOR = 0.91
KL_CEILING = 0.075


@pytest.fixture(scope="module")
def mnist_models(data_dir):
    tr = data.load("mnist", "test[:8000]", data_dir=data_dir)
    ev = data.load("mnist", "test[8000:]", data_dir=data_dir)
    tcfg = TeacherConfig(image_shape=tr.info.image_shape)
    vcfg = VAEConfig(image_shape=tr.info.image_shape)
    tp, th = train.train_teacher((tr.images, tr.labels), (ev.images, ev.labels), tcfg,
                                 dataclasses.replace(train.TEACHER_TRAIN, epochs=2),
                                 progress=False)
    vp, _ = train.train_vae(tr.images, ev.images, vcfg,
                            dataclasses.replace(train.VAE_TRAIN, epochs=4), progress=False)
    return ev, tcfg, tp, vcfg, vp, th[-1]["eval_accuracy"]


def test_vae_students_are_faithful_on_mnist(mnist_models):
    ev, tcfg, tp, vcfg, vp, acc = mnist_models
    assert acc > 0.95
    e = ex.explain_images(ev.images[:24], jax.random.PRNGKey(0),
                   teacher_apply=teacher_apply_for(tcfg),
                   teacher_params=tp, vae_params=vp, config=ex.ExplainConfig(vae=vcfg))
    top1, kl = float(np.mean(e.fidelity.top1)), float(np.mean(e.fidelity.kl))
    print(f"MNIST VAE-neighbour fidelity: top1 {top1:.3f}, KL {kl:.3f}")
    assert top1 >= TOP1_FLOOR and kl <= KL_CEILING
    # The student agrees with the teacher at the instance itself for most images.
    agree = np.mean(e.student_probs.argmax(-1) == e.teacher_probs.argmax(-1))
    assert agree >= 0.9
