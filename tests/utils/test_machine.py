from menet_jax.utils import machine

AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx avx2 avx512f

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: something else
"""

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
stepping\t: 8
flags\t\t: fpu sse2 avx avx2
"""


def test_cpu_model_names_vendor_family_model_and_simd():
  assert machine.cpu_model(AMD) == "AMD EPYC (AuthenticAMD family 25 model 17 stepping 1, AVX-512)"
  assert machine.cpu_model(INTEL) == ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz "
                                      "(GenuineIntel family 6 model 143 stepping 8, AVX2)")


def test_describe_includes_the_cpu_model():
  assert machine.describe().startswith(machine.cpu_model())
