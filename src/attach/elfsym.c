/* Symbol lookup in the ELF files mapped by a process (see elf.h).
 *
 * The files are mmap'd read-only and their section headers are treated as untrusted input:
 * every offset and size is checked against the file size before use. */
#include "attach/elfsym.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aioscope/error.h"

#define ASC_MAX_MAPPED_FILES 512

typedef struct {
    char path[512];
    uint64_t base; /* start of the mapping of file offset 0 */
} asc__mapped;

/* Distinct files mapped at offset 0, in map order. */
static int asc__read_maps(int pid, asc__mapped *files, size_t *nfiles) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    FILE *f = fopen(path, "r");
    *nfiles = 0;
    if (!f) {
        if (errno == ENOENT) return AIOSCOPE_ESRCH;
        return (errno == EACCES || errno == EPERM) ? AIOSCOPE_EPERM : AIOSCOPE_EIO;
    }
    char line[1024];
    while (fgets(line, sizeof line, f) && *nfiles < ASC_MAX_MAPPED_FILES) {
        unsigned long long start, end, off;
        char perms[8];
        int name_at = 0;
        if (sscanf(line, "%llx-%llx %7s %llx %*s %*s %n", &start, &end, perms, &off, &name_at) < 4 ||
            !name_at)
            continue;
        char *name = line + name_at;
        name[strcspn(name, "\n")] = 0;
        if (name[0] != '/' || off != 0 || strstr(name, " (deleted)")) continue;
        int seen = 0;
        for (size_t i = 0; i < *nfiles; i++)
            if (strcmp(files[i].path, name) == 0) seen = 1;
        if (seen) continue;
        snprintf(files[*nfiles].path, sizeof files[*nfiles].path, "%s", name);
        files[*nfiles].base = start;
        (*nfiles)++;
    }
    fclose(f);
    return 0;
}

/* Look names up in one mapped ELF image of size len. Returns how many were found. */
static size_t asc__lookup(const uint8_t *img, size_t len, uint64_t base, const char *const *names,
                          uint64_t *addrs, size_t n) {
    if (len < sizeof(Elf64_Ehdr) || memcmp(img, ELFMAG, SELFMAG) != 0 || img[EI_CLASS] != ELFCLASS64)
        return 0;
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)img;
    if (eh->e_shentsize != sizeof(Elf64_Shdr) || eh->e_shoff > len ||
        (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr) > len - eh->e_shoff ||
        eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phoff > len ||
        (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > len - eh->e_phoff)
        return 0;
    /* Load bias: where the first PT_LOAD segment landed minus where it asked to be. A non-PIE
     * executable (ET_EXEC) is loaded where it asks: bias 0. */
    uint64_t bias = 0;
    if (eh->e_type == ET_DYN) {
        const Elf64_Phdr *ph = (const Elf64_Phdr *)(img + eh->e_phoff);
        for (size_t i = 0; i < eh->e_phnum; i++)
            if (ph[i].p_type == PT_LOAD) {
                bias = base - (ph[i].p_vaddr & ~(uint64_t)4095);
                break;
            }
    }
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(img + eh->e_shoff);
    size_t found = 0;
    /* .symtab first (all symbols, in unstripped builds), then .dynsym (exported ones). */
    for (int pass = 0; pass < 2; pass++) {
        uint32_t want = pass == 0 ? SHT_SYMTAB : SHT_DYNSYM;
        for (size_t s = 0; s < eh->e_shnum; s++) {
            if (sh[s].sh_type != want || sh[s].sh_link >= eh->e_shnum) continue;
            const Elf64_Shdr *strs = &sh[sh[s].sh_link];
            if (sh[s].sh_offset > len || sh[s].sh_size > len - sh[s].sh_offset ||
                strs->sh_offset > len || strs->sh_size > len - strs->sh_offset ||
                sh[s].sh_entsize != sizeof(Elf64_Sym))
                continue;
            const Elf64_Sym *syms = (const Elf64_Sym *)(img + sh[s].sh_offset);
            const char *str = (const char *)(img + strs->sh_offset);
            size_t nsyms = sh[s].sh_size / sizeof(Elf64_Sym);
            for (size_t i = 0; i < nsyms; i++) {
                if (syms[i].st_name >= strs->sh_size || syms[i].st_shndx == SHN_UNDEF ||
                    !syms[i].st_value)
                    continue;
                const char *nm = str + syms[i].st_name;
                size_t maxlen = strs->sh_size - syms[i].st_name;
                for (size_t k = 0; k < n; k++) {
                    if (addrs[k] || strncmp(nm, names[k], maxlen) != 0) continue;
                    addrs[k] = syms[i].st_value + bias;
                    found++;
                }
            }
        }
    }
    return found;
}

int asc_elf_find_symbols(int pid, const char *const *names, uint64_t *addrs, size_t n,
                         char *binary, size_t binary_cap, int *minor_hint) {
    asc__mapped *files = calloc(ASC_MAX_MAPPED_FILES, sizeof *files);
    size_t nfiles;
    if (!files) return AIOSCOPE_ENOMEM;
    int rc = asc__read_maps(pid, files, &nfiles);
    if (rc < 0) goto out;
    char exe[512] = "";
    char link[64];
    snprintf(link, sizeof link, "/proc/%d/exe", pid);
    ssize_t el = readlink(link, exe, sizeof exe - 1);
    if (el < 0 && (errno == EACCES || errno == EPERM)) {
        rc = AIOSCOPE_EPERM;
        goto out;
    }
    exe[el > 0 ? el : 0] = 0;
    rc = AIOSCOPE_ENOTPY;
    /* Candidates: libpython first (the executable of a shared build only imports
     * _PyRuntime), then the executable itself (static builds). */
    for (int pass = 0; pass < 2 && rc == AIOSCOPE_ENOTPY; pass++) {
        for (size_t i = 0; i < nfiles; i++) {
            const char *slash = strrchr(files[i].path, '/');
            const char *base = slash ? slash + 1 : files[i].path;
            int is_lib = strncmp(base, "libpython3", 10) == 0;
            if (pass == 0 ? !is_lib : strcmp(files[i].path, exe) != 0) continue;
            /* Open through /proc/PID/root so that a process in another mount namespace (a
             * container) resolves its own paths; fall back to our view. */
            char p[600];
            snprintf(p, sizeof p, "/proc/%d/root%s", pid, files[i].path);
            int fd = open(p, O_RDONLY | O_CLOEXEC);
            if (fd < 0) fd = open(files[i].path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            struct stat st;
            void *img = MAP_FAILED;
            if (fstat(fd, &st) == 0 && st.st_size > 0)
                img = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            close(fd);
            if (img == MAP_FAILED) continue;
            memset(addrs, 0, n * sizeof *addrs);
            asc__lookup(img, (size_t)st.st_size, files[i].base, names, addrs, n);
            munmap(img, (size_t)st.st_size);
            if (!addrs[0]) continue;
            snprintf(binary, binary_cap, "%s", files[i].path);
            *minor_hint = 0;
            if (is_lib) {
                int minor = 0;
                if (sscanf(base, "libpython3.%d", &minor) == 1) *minor_hint = minor;
            }
            rc = 0;
            break;
        }
    }
    if (rc == AIOSCOPE_ENOTPY) {
        /* A libpython without the anchor is a Python we cannot read (2.7, 3.6, ...), not a
         * non-Python process. */
        for (size_t i = 0; i < nfiles; i++) {
            const char *slash = strrchr(files[i].path, '/');
            if (strncmp(slash ? slash + 1 : files[i].path, "libpython", 9) == 0) rc = AIOSCOPE_EUNSUPPORTED;
        }
    }
out:
    free(files);
    return rc;
}
