// Function multi-versioning for the CPU ops' hot loops: GCC compiles a function marked
// TNTK_CPU_CLONES for x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA) and the baseline, and
// picks the best one for the running CPU once, at load time.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TNTK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TNTK_CPU_CLONES
#endif
