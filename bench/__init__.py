"""Performance benchmarks of the product (``python -m bench.<script>``); results in bench/results/."""
