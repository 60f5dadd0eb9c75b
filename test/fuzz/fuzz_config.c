/* fuzz_config.c — libFuzzer harness for the configuration loader (SPEC §2):
 * any bytes as a configuration file must load or fail with a FILE:LINE
 * message, never crash, leak or overrun. The input reaches config_load()
 * through a memfd, so no file is written. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "policy/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int fd = memfd_create("tlsfront-fuzz.conf", 0);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	struct tf_config cfg;
	char err[512];
	if (config_load(path, &cfg, err, sizeof(err)) == 0) {
		config_free(&cfg);
	} else if (strncmp(err, path, strlen(path)) != 0) {
		__builtin_trap(); /* every error names the file */
	}
	close(fd);
	return 0;
}
