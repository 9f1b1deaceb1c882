"""dss_jax: distilling step-by-step on JAX/Flax (T5 students, SeqIO tasks, T5X-style trainer)."""
from setuptools import find_packages, setup

setup(
    name="dss_jax",
    version="0.1.0",
    description="Distilling step-by-step (Hsieh et al. 2023) on JAX/Flax: SeqIO tasks, "
    "a partitioned T5 trainer, evaluation, launchers and a teacher step.",
    python_requires=">=3.10,<3.13",
    # The design card's top-level folders are installed under import names that cannot
    # collide with other packages: tasks/ -> dss_tasks, gin/ -> dss_jax_gin, launch/ -> dss_launch.
    packages=find_packages(include=["dss_jax", "dss_jax.*"])
    + ["dss_tasks", "dss_jax_gin", "dss_launch"],
    package_dir={"dss_tasks": "tasks", "dss_jax_gin": "gin", "dss_launch": "launch"},
    include_package_data=True,
    package_data={
        "dss_jax_gin": ["*.gin", "*/*.gin", "*/*/*.gin"],
        "dss_jax.teacher": ["prompts/*.txt"],
        "dss_launch": ["*.sh", "*.yaml", "*.slurm"],
    },
    install_requires=[
        "jax>=0.10.0,<0.11",
        "flax>=0.12.0,<0.13",
        "optax>=0.2.6,<0.3",
        "orbax-checkpoint>=0.12.0,<0.13",
        "seqio>=0.0.20,<0.0.21",
        "tensorflow>=2.21,<2.22",
        "tensorflow-datasets>=4.9.9,<4.10",
        "gin-config>=0.5.0,<0.6",
        "sentencepiece>=0.2.0,<0.3",
        "safetensors>=0.4,<1",
        "numpy>=1.26,<3",
        "tqdm>=4.66",
        "PyYAML>=6",
        "tensorboard>=2.21,<2.22",
        "clu>=0.0.12",
        "huggingface_hub>=0.30,<3",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "torch==2.13.0",
            "transformers>=5.0,<6",
        ],
    },
    entry_points={"console_scripts": []},
)
