/* satnetem's shortest-path trees: one Dijkstra run per source on a graph in CSR form, from C.
 *
 * A route table needs one tree per destination: on the access example (9,294 nodes, 339 destinations)
 * scipy's csgraph.dijkstra takes ~380 ms a step and the lookup of each next hop's link slot ~130 ms more,
 * in the route worker, on the path of every step (emulator/routeworker.py). This loop keeps an indexed
 * binary heap per thread and records, with each node's predecessor, the edge it came by, so the link slot
 * needs no lookup afterwards.
 *
 * Built by install.sh as build/libsatnetem-dijkstra.so, loaded through ctypes (routing/graph.py); without
 * it routing/graph.py runs scipy, with the same distances.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

struct graph {
	int32_t n;
	const int64_t *indptr; /* (n + 1,): edges of node u are [indptr[u], indptr[u + 1]) */
	const int32_t *head;   /* (n_edges,): the node each edge leads to */
	const double *weight;  /* (n_edges,): > 0 */
	const int32_t *tag;    /* (n_edges,): returned for the edge a node was reached by */
};

struct job {
	const struct graph *g;
	const int32_t *sources;
	int32_t first, last;  /* this thread's sources: [first, last) */
	double *dist;         /* (n_sources, n) */
	int32_t *pred;        /* (n_sources, n) */
	int32_t *pred_tag;    /* (n_sources, n) */
	int failed;
};

#define DONE (-2)
#define OUT (-1)

/* heap entries carry their key: a sift reads one array, not the node's distance through its index */
struct entry {
	double key;
	int32_t node;
};

static void sift_up(struct entry *heap, int32_t *pos, int32_t i, struct entry x)
{
	while (i > 0) {
		int32_t parent = (i - 1) / 2;
		if (heap[parent].key <= x.key)
			break;
		heap[i] = heap[parent];
		pos[heap[i].node] = i;
		i = parent;
	}
	heap[i] = x;
	pos[x.node] = i;
}

static void sift_down(struct entry *heap, int32_t *pos, int32_t size, struct entry x)
{
	int32_t i = 0;
	for (;;) {
		int32_t c = 2 * i + 1;
		if (c >= size)
			break;
		if (c + 1 < size && heap[c + 1].key < heap[c].key)
			c++;
		if (heap[c].key >= x.key)
			break;
		heap[i] = heap[c];
		pos[heap[i].node] = i;
		i = c;
	}
	heap[i] = x;
	pos[x.node] = i;
}

/* One tree from source s: dist, pred (-1 at s and where unreachable) and the tag of the edge into each
 * node (-1 likewise). Ties: the first edge to reach a node at its least distance keeps it. */
static void tree(const struct graph *g, int32_t s, double *dist, int32_t *pred, int32_t *pred_tag,
		 struct entry *heap, int32_t *pos)
{
	int32_t n = g->n, size = 1;
	for (int32_t v = 0; v < n; v++) {
		dist[v] = INFINITY;
		pred[v] = -1;
		pred_tag[v] = -1;
		pos[v] = OUT;
	}
	dist[s] = 0.0;
	heap[0] = (struct entry){0.0, s};
	pos[s] = 0;
	while (size > 0) {
		int32_t u = heap[0].node;
		double du = heap[0].key;
		pos[u] = DONE;
		if (--size > 0)
			sift_down(heap, pos, size, heap[size]);
		for (int64_t e = g->indptr[u]; e < g->indptr[u + 1]; e++) {
			int32_t v = g->head[e];
			int32_t at = pos[v];
			if (at == DONE)
				continue;
			double d = du + g->weight[e];
			if (!(d < dist[v]))
				continue;
			dist[v] = d;
			pred[v] = u;
			pred_tag[v] = g->tag[e];
			sift_up(heap, pos, at == OUT ? size++ : at, (struct entry){d, v});
		}
	}
}

static void *run_job(void *arg)
{
	struct job *j = arg;
	int32_t n = j->g->n;
	struct entry *heap = malloc(sizeof(struct entry) * (size_t)(n > 0 ? n : 1));
	int32_t *pos = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
	if (heap == NULL || pos == NULL) {
		j->failed = 1;
	} else {
		for (int32_t i = j->first; i < j->last; i++) {
			size_t row = (size_t)i * (size_t)n;
			tree(j->g, j->sources[i], j->dist + row, j->pred + row, j->pred_tag + row, heap, pos);
		}
	}
	free(heap);
	free(pos);
	return NULL;
}

#define MAX_THREADS 64

/*
 * Shortest-path trees from each of sources[0..n_sources) over the graph (indptr, head, weight, tag) of n
 * nodes, split over `threads` threads. Row i of dist, pred and pred_tag (each n_sources x n, row-major) is
 * the tree of sources[i]. Weights must be positive; sources in [0, n).
 *
 * Returns 0, or -1 if memory or a thread could not be had (the rows are then unspecified).
 */
int satnetem_dijkstra(int32_t n, const int64_t *indptr, const int32_t *head, const double *weight,
		      const int32_t *tag, int32_t n_sources, const int32_t *sources, int threads, double *dist,
		      int32_t *pred, int32_t *pred_tag)
{
	struct graph g = {n, indptr, head, weight, tag};
	struct job jobs[MAX_THREADS];
	pthread_t tid[MAX_THREADS];
	int started[MAX_THREADS] = {0};
	int failed = 0;
	if (threads < 1)
		threads = 1;
	if (threads > MAX_THREADS)
		threads = MAX_THREADS;
	if (threads > n_sources)
		threads = n_sources > 0 ? n_sources : 1;
	for (int t = 0; t < threads; t++) {
		jobs[t] = (struct job){&g, sources, (int32_t)((int64_t)n_sources * t / threads),
				       (int32_t)((int64_t)n_sources * (t + 1) / threads), dist, pred, pred_tag, 0};
	}
	for (int t = 1; t < threads; t++) {
		if (pthread_create(&tid[t], NULL, run_job, &jobs[t]) == 0)
			started[t] = 1;
		else
			run_job(&jobs[t]); /* no thread: this one does its share */
	}
	run_job(&jobs[0]);
	for (int t = 0; t < threads; t++) {
		if (started[t])
			pthread_join(tid[t], NULL);
		failed |= jobs[t].failed;
	}
	return failed ? -1 : 0;
}
