package mailtext

import (
	"container/list"
	"sync"
)

// Cache keeps recent Extracts by the content address of the raw message.
// Raw messages are immutable (content-addressed), so an entry never goes
// stale and the cache is safe to keep per process even with several nodes.
type Cache struct {
	mu    sync.Mutex
	max   int
	size  int
	ll    *list.List
	items map[string]*list.Element
}

type entry struct {
	key string
	ex  *Extract
	n   int
}

// NewCache returns a cache holding at most maxBytes (approximately) of
// extracted text; 0 or less disables caching.
func NewCache(maxBytes int) *Cache {
	return &Cache{max: maxBytes, ll: list.New(), items: map[string]*list.Element{}}
}

// Get returns the cached Extract for key.
func (c *Cache) Get(key string) (*Extract, bool) {
	if c == nil || c.max <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.ll.MoveToFront(el)
		return el.Value.(*entry).ex, true
	}
	return nil, false
}

// Add stores an Extract; callers must not modify it afterwards.
func (c *Cache) Add(key string, ex *Extract) {
	if c == nil || c.max <= 0 {
		return
	}
	n := ex.Size() + len(key)
	if n > c.max/4 {
		return // one huge message must not flush the whole cache
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.ll.MoveToFront(el)
		return
	}
	c.items[key] = c.ll.PushFront(&entry{key: key, ex: ex, n: n})
	c.size += n
	for c.size > c.max {
		el := c.ll.Back()
		e := el.Value.(*entry)
		c.ll.Remove(el)
		delete(c.items, e.key)
		c.size -= e.n
	}
}

// Len is the number of cached entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
