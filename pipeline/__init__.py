"""The training side of mnist-vae: stages that talk to each other only through files.

python run_pipeline.py --mirror ../shared/data/mnist --config configs/smoke.toml
"""
