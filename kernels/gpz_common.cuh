// Definitions shared by the kernel cores: they compile under NVRTC and, for the CPU tests, g++.
#ifndef GPUZARR_COMMON_CUH
#define GPUZARR_COMMON_CUH

#ifndef __CUDACC__
#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#endif

// No <stdint.h>: NVRTC compiles without the host's C headers.
typedef unsigned char gpz_u8;
typedef long long gpz_i64;
typedef unsigned long long gpz_u64;

#endif
