"""Builds the one C extension (the forwarding hot path); everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and
the server forwards in Python (callsctl_sfu/rtc/fastpath.py reports which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "callsctl_sfu.rtc._fanout",
            sources=["callsctl_sfu/rtc/_fanout.c", "callsctl_sfu/rtc/_ingress.c",
                     "callsctl_sfu/rtc/_iceanswer.c", "callsctl_sfu/rtc/_recvpump.c",
                     "callsctl_sfu/rtc/_srtpseal.c"],
            depends=["callsctl_sfu/rtc/_fanout.h", "callsctl_sfu/rtc/_iceanswer.h",
                     "callsctl_sfu/rtc/_pktinfo.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
            optional=True,
        )
    ]
)
