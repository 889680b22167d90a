// Math is not rendered (no MathJax from a CDN: the docs work offline); TeX shows as written.
