#define _DEFAULT_SOURCE /* syscall() under -std=c11 */
#include "core/cpu.h"

#include <pthread.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

static int selected = -1;      /* -1: not chosen yet, use the best */
static int bf16_selected = -1; /* the same for the bf16 kernels */

herbs_isa herbs_isa_best(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return HERBS_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return HERBS_ISA_AVX2;
#endif
    return HERBS_ISA_PORTABLE;
}

herbs_isa herbs_isa_current(void) { return selected < 0 ? herbs_isa_best() : (herbs_isa)selected; }

const char *herbs_isa_name(herbs_isa isa)
{
    switch (isa) {
    case HERBS_ISA_AVX512: return "avx512";
    case HERBS_ISA_AVX2: return "avx2";
    default: return "portable";
    }
}

herbs_status herbs_isa_select(const char *name)
{
    for (int isa = HERBS_ISA_PORTABLE; isa <= HERBS_ISA_AVX512; isa++) {
        if (strcmp(name, herbs_isa_name((herbs_isa)isa)) != 0)
            continue;
        if (isa > (int)herbs_isa_best())
            return herbs_error(HERBS_ERR_VALUE, "ISA '%s' is not supported by this CPU (best: '%s')",
                               name, herbs_isa_name(herbs_isa_best()));
        selected = isa;
        return HERBS_OK;
    }
    return herbs_error(HERBS_ERR_VALUE, "unknown ISA '%s': expected 'avx512', 'avx2' or 'portable'", name);
}

/* --- bf16 ---------------------------------------------------------------------------------- */

#define ARCH_REQ_XCOMP_PERM 0x1023 /* <asm/prctl.h>, Linux 5.16 */
#define XFEATURE_XTILEDATA 18

static int amx_allowed; /* the CPU has AMX-BF16 and Linux lets this process use tile data */
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

/* Asks Linux once for the tile data state (off by default: it is 8 KB of every thread's
   saved context); a kernel without the request, or that refuses it, leaves AMX unused. */
static void amx_request(void)
{
#if defined(__linux__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
        __builtin_cpu_supports("avx512bf16"))
        amx_allowed = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#endif
}

herbs_bf16_isa herbs_bf16_isa_best(void)
{
#if defined(__x86_64__)
    pthread_once(&amx_once, amx_request);
    if (amx_allowed)
        return HERBS_BF16_ISA_AMX;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw"))
        return HERBS_BF16_ISA_AVX512;
#endif
    return HERBS_BF16_ISA_PORTABLE;
}

herbs_bf16_isa herbs_bf16_isa_current(void)
{
    return bf16_selected < 0 ? herbs_bf16_isa_best() : (herbs_bf16_isa)bf16_selected;
}

const char *herbs_bf16_isa_name(herbs_bf16_isa isa)
{
    switch (isa) {
    case HERBS_BF16_ISA_AMX: return "amx";
    case HERBS_BF16_ISA_AVX512: return "avx512_bf16";
    default: return "portable";
    }
}

herbs_status herbs_bf16_isa_select(const char *name)
{
    for (int isa = HERBS_BF16_ISA_PORTABLE; isa <= HERBS_BF16_ISA_AMX; isa++) {
        if (strcmp(name, herbs_bf16_isa_name((herbs_bf16_isa)isa)) != 0)
            continue;
        if (isa > (int)herbs_bf16_isa_best())
            return herbs_error(HERBS_ERR_VALUE, "bf16 ISA '%s' is not supported by this CPU or OS (best: '%s')",
                               name, herbs_bf16_isa_name(herbs_bf16_isa_best()));
        bf16_selected = isa;
        return HERBS_OK;
    }
    return herbs_error(HERBS_ERR_VALUE, "unknown bf16 ISA '%s': expected 'amx', 'avx512_bf16' or 'portable'", name);
}

/* --- microarchitecture ------------------------------------------------------------------------ */

static herbs_cpu_family cpu_family_detect(void)
{
#if defined(__x86_64__)
    unsigned eax, ebx, ecx, edx;
    char vendor[13] = {0};
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx))
        return HERBS_CPU_GENERIC;
    memcpy(vendor, &ebx, 4);
    memcpy(vendor + 4, &edx, 4);
    memcpy(vendor + 8, &ecx, 4);
    if (strcmp(vendor, "AuthenticAMD") != 0 || !__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return HERBS_CPU_GENERIC;
    const unsigned family = ((eax >> 8) & 0xF) + ((eax >> 20) & 0xFF);
    const unsigned model = ((eax >> 4) & 0xF) | ((eax >> 12) & 0xF0);
    /* family 19h: Zen 3 and Zen 4; Zen 4 is models 10h-1Fh (Genoa), 60h-7Fh (Raphael, Phoenix),
       A0h-AFh (Bergamo, Siena) */
    if (family == 0x19 && ((model >= 0x10 && model <= 0x1F) || (model >= 0x60 && model <= 0x7F) ||
                           (model >= 0xA0 && model <= 0xAF)))
        return HERBS_CPU_ZEN4;
#endif
    return HERBS_CPU_GENERIC;
}

static herbs_cpu_family cpu_family;
static pthread_once_t cpu_family_once = PTHREAD_ONCE_INIT;

static void cpu_family_init(void) { cpu_family = cpu_family_detect(); }

herbs_cpu_family herbs_cpu_family_current(void)
{
    pthread_once(&cpu_family_once, cpu_family_init);
    return cpu_family;
}

const char *herbs_cpu_family_name(herbs_cpu_family family) { return family == HERBS_CPU_ZEN4 ? "zen4" : "generic"; }
