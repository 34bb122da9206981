/* The catalogue entry `gcc-compile` (docs/real-programs.md): a small C module for gcc -O2
 * to compile: an open-addressing hash map with string keys, resizing and iteration. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct entry { char *key; uint64_t hash; long value; int used; };
struct map { struct entry *slots; size_t cap, len; };

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	while (*s) { h ^= (unsigned char)*s++; h *= 1099511628211ull; }
	return h;
}

static int map_init(struct map *m, size_t cap)
{
	m->slots = calloc(cap, sizeof(*m->slots));
	m->cap = cap;
	m->len = 0;
	return m->slots ? 0 : -1;
}

static struct entry *map_find(const struct map *m, const char *key, uint64_t h)
{
	size_t i = h & (m->cap - 1);
	for (;;) {
		struct entry *e = &m->slots[i];
		if (!e->used || (e->hash == h && !strcmp(e->key, key)))
			return e;
		i = (i + 1) & (m->cap - 1);
	}
}

static int map_grow(struct map *m)
{
	struct map n;
	if (map_init(&n, m->cap * 2))
		return -1;
	for (size_t i = 0; i < m->cap; i++) {
		struct entry *e = &m->slots[i];
		if (e->used)
			*map_find(&n, e->key, e->hash) = *e;
	}
	n.len = m->len;
	free(m->slots);
	*m = n;
	return 0;
}

int map_put(struct map *m, const char *key, long value)
{
	if ((m->len + 1) * 4 > m->cap * 3 && map_grow(m))
		return -1;
	uint64_t h = fnv1a(key);
	struct entry *e = map_find(m, key, h);
	if (!e->used) {
		e->key = strdup(key);
		if (!e->key)
			return -1;
		e->hash = h;
		e->used = 1;
		m->len++;
	}
	e->value = value;
	return 0;
}

long map_get(const struct map *m, const char *key, long dflt)
{
	struct entry *e = map_find(m, key, fnv1a(key));
	return e->used ? e->value : dflt;
}

long map_sum(const struct map *m)
{
	long s = 0;
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].used)
			s += m->slots[i].value;
	return s;
}

void map_free(struct map *m)
{
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].used)
			free(m->slots[i].key);
	free(m->slots);
	m->slots = NULL;
	m->cap = m->len = 0;
}

long word_counts(const char *text, struct map *m)
{
	char word[64];
	size_t n = 0;
	long words = 0;
	if (map_init(m, 16))
		return -1;
	for (const char *p = text;; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) {
			if (n < sizeof(word) - 1)
				word[n++] = *p | 0x20;
		} else if (n) {
			word[n] = 0;
			map_put(m, word, map_get(m, word, 0) + 1);
			words++;
			n = 0;
		}
		if (!*p)
			break;
	}
	return words;
}
