"""Train an SDXL Smooth-LoRA with kohya sd-scripts (v0.10.x) plus the Smooth Diffusion regularizer.

Takes every `sdxl_train_network.py` option (command line or --config_file TOML) plus --smooth_* options.
With --gradient_checkpointing the SDXL UNet is switched to non-reentrant checkpointing, which keeps the
second-order graph the regularizer needs. Example:

    accelerate launch train/smooth_sdxl_train_network.py --sd_scripts_dir ../sd-scripts --config_file train/configs/sdxl.toml
"""

from smooth_common import SmoothRegularizerMixin, run


def make_trainer(sd_scripts):
    class SmoothSdxlNetworkTrainer(SmoothRegularizerMixin, sd_scripts.SdxlNetworkTrainer):
        per_sample_batch_keys = ("original_sizes_hw", "crop_top_lefts", "target_sizes_hw")

        def load_target_model(self, args, weight_dtype, accelerator):
            if args.gradient_checkpointing:
                import library.sdxl_original_unet as sdxl_unet

                sdxl_unet.USE_REENTRANT = False  # reentrant checkpointing drops the double-backward graph
            return super().load_target_model(args, weight_dtype, accelerator)

    return SmoothSdxlNetworkTrainer()


if __name__ == "__main__":
    run("sdxl_train_network", make_trainer)
