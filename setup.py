"""mpqc: a hardware-aware compiler for mixed-precision (bit-serial) neural networks.

`schedules/` and `targets/` sit at the top level of the repository and install as
`mpqc.schedules` and `mpqc.targets` through `package_dir`.
"""
from setuptools import find_packages, setup

setup(
    name="mpqc",
    version="0.1.0",
    description="Mixed-precision quantization compiler: EBS/BP-NAS search, TVM bit-serial kernels",
    python_requires=">=3.10",
    packages=["mpqc", *(f"mpqc.{p}" for p in find_packages("mpqc")), "mpqc.schedules",
              "mpqc.targets"],
    package_dir={
        "mpqc": "mpqc",
        "mpqc.schedules": "schedules",
        "mpqc.targets": "targets",
    },
    package_data={"mpqc.targets": ["*.json"]},
    install_requires=[
        "torch==2.13.0",
        "apache-tvm==0.27.0.post1",
        "apache-tvm-ffi==0.1.14.post1",
        "numpy",
        "click",
        "tqdm",
        "pillow",
    ],
    entry_points={"console_scripts": ["mpqc=mpqc.cli:main"]},
)
