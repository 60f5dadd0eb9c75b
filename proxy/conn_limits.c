/* conn_limits.c — the connection counters of conn_limits.h: a total and an
 * open-addressing hash table of per-IP counts, bounded by max_total entries.
 * Never does I/O. */
#include "proxy/conn_limits.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct ip_slot {
	unsigned char ip[16]; /* IPv4 as ::ffff:a.b.c.d */
	unsigned count;	      /* 0: free (tombstones are count 0 with used set) */
	bool used;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct ip_slot *slots;
static size_t n_slots;
static unsigned total, limit_total, limit_per_ip;

int conn_limits_init(unsigned max_total, unsigned max_per_ip)
{
	limit_total = max_total;
	limit_per_ip = max_per_ip;
	/* At most max_total addresses are live at once: twice that many slots
	 * keep the probe sequences short. */
	n_slots = 2 * (size_t)max_total + 1;
	slots = calloc(n_slots, sizeof(*slots));
	return slots ? 0 : -1;
}

static struct ip_slot *find(const unsigned char ip[16], bool create);

int conn_limits_set(unsigned max_total, unsigned max_per_ip)
{
	int rc = 0;
	pthread_mutex_lock(&lock);
	size_t want = 2 * (size_t)max_total + 1;
	if (want > n_slots) {
		/* Grow: rehash the live addresses into a larger table. */
		struct ip_slot *old = slots;
		size_t n_old = n_slots;
		struct ip_slot *fresh = calloc(want, sizeof(*fresh));
		if (!fresh) {
			rc = -1;
		} else {
			slots = fresh;
			n_slots = want;
			for (size_t i = 0; i < n_old; i++) {
				if (!old[i].count)
					continue;
				struct ip_slot *s = find(old[i].ip, true);
				*s = old[i];
			}
			free(old);
		}
	}
	if (rc == 0) {
		limit_total = max_total;
		limit_per_ip = max_per_ip;
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

size_t conn_limits_slots_in_use(void)
{
	size_t n = 0;
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < n_slots; i++)
		n += slots[i].used;
	pthread_mutex_unlock(&lock);
	return n;
}

void conn_limits_free(void)
{
	free(slots);
	slots = NULL;
	n_slots = 0;
	total = 0;
}

static void key_of(const struct sockaddr *sa, unsigned char ip[16])
{
	memset(ip, 0, 16);
	if (sa->sa_family == AF_INET) {
		ip[10] = ip[11] = 0xff;
		memcpy(ip + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		memcpy(ip, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
	}
}

static size_t hash_of(const unsigned char ip[16])
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (int i = 0; i < 16; i++)
		h = (h ^ ip[i]) * 1099511628211ULL;
	return (size_t)(h % n_slots);
}

/* The slot holding ip, or the first reusable slot on its probe path. */
static struct ip_slot *find(const unsigned char ip[16], bool create)
{
	size_t i = hash_of(ip);
	struct ip_slot *reuse = NULL;
	for (size_t probes = 0; probes < n_slots; probes++, i = (i + 1) % n_slots) {
		struct ip_slot *s = &slots[i];
		if (!s->used) {
			return create ? (reuse ? reuse : s) : NULL;
		}
		if (s->count && memcmp(s->ip, ip, 16) == 0)
			return s;
		if (!s->count && !reuse)
			reuse = s;
	}
	return create ? reuse : NULL;
}

/* Slot i just became a tombstone. When the slot after it is free, no probe
 * path runs through i, nor through the tombstones right before it: they all
 * become free again, so lookups of new addresses stay short however many
 * addresses have come and gone. The caller holds the lock. */
static void clear_tombstones(size_t i)
{
	if (slots[(i + 1) % n_slots].used)
		return;
	for (size_t n = 0; n < n_slots && slots[i].used && !slots[i].count; n++) {
		slots[i].used = false;
		i = (i + n_slots - 1) % n_slots;
	}
}

/* Admits ip when both limits allow it; the caller holds the lock. */
static bool admit_locked(const unsigned char ip[16])
{
	if (total >= limit_total)
		return false;
	struct ip_slot *s = find(ip, true);
	if (!s || s->count >= limit_per_ip)
		return false;
	if (!s->count)
		memcpy(s->ip, ip, 16);
	s->used = true;
	s->count++;
	total++;
	return true;
}

bool conn_limits_admit(const struct sockaddr *addr)
{
	unsigned char ip[16];
	key_of(addr, ip);
	pthread_mutex_lock(&lock);
	bool ok = admit_locked(ip);
	pthread_mutex_unlock(&lock);
	return ok;
}

bool conn_limits_hold(void)
{
	pthread_mutex_lock(&lock);
	bool ok = total < limit_total;
	if (ok)
		total++;
	pthread_mutex_unlock(&lock);
	return ok;
}

bool conn_limits_admit_held(const struct sockaddr *addr)
{
	unsigned char ip[16];
	key_of(addr, ip);
	pthread_mutex_lock(&lock);
	total--; /* the hold ends here, whatever the outcome */
	bool ok = admit_locked(ip);
	pthread_mutex_unlock(&lock);
	return ok;
}

void conn_limits_unhold(void)
{
	pthread_mutex_lock(&lock);
	total--;
	pthread_mutex_unlock(&lock);
}

void conn_limits_release(const struct sockaddr *addr)
{
	unsigned char ip[16];
	key_of(addr, ip);
	pthread_mutex_lock(&lock);
	struct ip_slot *s = find(ip, false);
	if (s && s->count) {
		s->count--; /* count 0 with used set: a tombstone, reusable */
		total--;
		if (!s->count)
			clear_tombstones((size_t)(s - slots));
	}
	pthread_mutex_unlock(&lock);
}
