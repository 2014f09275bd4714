// The usage page's two charts, drawn by Chart.js from the numbers the page
// embeds as JSON (the same numbers its tables show). The only script of kgb web.
"use strict";
(function () {
  const source = document.getElementById("usage-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const palette = ["#3266cc", "#dc6b2f", "#2e9e6a", "#b04fb0", "#c9a227", "#5aa7c7", "#8c564b", "#7f7f7f"];
  const colour = (i) => palette[i % palette.length];
  const stacked = {
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    interaction: { mode: "index", intersect: false },
    scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
  };
  function draw(id, datasets, options) {
    const canvas = document.getElementById(id);
    if (!canvas) return;
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.days,
        datasets: datasets.map((d, i) => ({ label: d.label, data: d.data, backgroundColor: colour(i) })),
      },
      options: options,
    });
    canvas.dataset.drawn = "true";
  }
  draw("tokens-chart", data.tokens, stacked);
  draw("cost-chart", data.cost, {
    ...stacked,
    plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: $${c.parsed.y.toFixed(4)}` } } },
  });
})();
