"""Write a random-weight model at Stable Diffusion 1.5's published sizes as a diffusers folder.

Its images mean nothing, but every layer has SD 1.5's shape, so the time and memory a step or a frame
takes are the real model's: the GPU benchmarks (bench/gpu_checks.sh) time it at 512 px.

    python -m bench.full_size_model --out /tmp/sd15-random [--arch sd1|sd2|sdxl]
"""

from __future__ import annotations

import argparse

from lib_smooth.testing import build_full_size_backend, save_diffusers_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default="sd1", choices=("sd1", "sd2", "sdxl"))
    args = parser.parse_args()
    print(f"wrote {save_diffusers_folder(build_full_size_backend(args.arch), args.out)}")


if __name__ == "__main__":
    main()
