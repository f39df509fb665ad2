"""Train a Smooth-LoRA for SD1.x / SD2.x with kohya sd-scripts (v0.10.x) plus the Smooth Diffusion regularizer.

Takes every `train_network.py` option (command line or --config_file TOML) plus --smooth_* options;
see README "Train your own Smooth-LoRA". Example:

    accelerate launch train/smooth_train_network.py --sd_scripts_dir ../sd-scripts --config_file train/configs/sd15_paper.toml
"""

from smooth_common import SmoothRegularizerMixin, run


def make_trainer(sd_scripts):
    class SmoothNetworkTrainer(SmoothRegularizerMixin, sd_scripts.NetworkTrainer):
        pass

    return SmoothNetworkTrainer()


if __name__ == "__main__":
    run("train_network", make_trainer)
