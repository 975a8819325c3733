// metricdepth's point-cloud viewer: WebGL points with an orbit camera, or a 2-D canvas fallback.
//
// PointViewer(canvas).show(positions, colours) takes camera-frame points in metres (OpenCV frame:
// x right, y down, z forward; Float32Array of x, y, z) and their colours (Uint8Array of r, g, b).
// The view starts at the photo's own camera looking at the scene; drag orbits around the centre of
// the points, the wheel zooms, a double-click resets. `mode` says what draws: "webgl" or "2d".
"use strict";

(function () {
  // ---------------------------------------------------------------- 4x4 matrices (column-major)
  function perspective(fovyRad, aspect, near, far) {
    const f = 1 / Math.tan(fovyRad / 2);
    const m = new Float32Array(16);
    m[0] = f / aspect;
    m[5] = f;
    m[10] = (far + near) / (near - far);
    m[11] = -1;
    m[14] = (2 * far * near) / (near - far);
    return m;
  }

  function lookAt(eye, target, up) {
    const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
    const unit = (a) => { const n = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / n, a[1] / n, a[2] / n]; };
    const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    const z = unit(sub(eye, target));
    const x = unit(cross(up, z));
    const y = cross(z, x);
    return new Float32Array([
      x[0], y[0], z[0], 0,
      x[1], y[1], z[1], 0,
      x[2], y[2], z[2], 0,
      -dot(x, eye), -dot(y, eye), -dot(z, eye), 1,
    ]);
  }

  function multiply(a, b) {
    const out = new Float32Array(16);
    for (let col = 0; col < 4; col++) {
      for (let row = 0; row < 4; row++) {
        let sum = 0;
        for (let k = 0; k < 4; k++) sum += a[k * 4 + row] * b[col * 4 + k];
        out[col * 4 + row] = sum;
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- WebGL
  const VERTEX = `
    attribute vec3 position;
    attribute vec3 colour;
    uniform mat4 mvp;
    uniform float size;
    varying vec3 v_colour;
    void main() {
      gl_Position = mvp * vec4(position, 1.0);
      gl_PointSize = size;
      v_colour = colour;
    }`;
  const FRAGMENT = `
    precision mediump float;
    varying vec3 v_colour;
    void main() { gl_FragColor = vec4(v_colour, 1.0); }`;

  function compile(gl, type, source) {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) {
      throw new Error("shader: " + gl.getShaderInfoLog(shader));
    }
    return shader;
  }

  function makeProgram(gl) {
    const program = gl.createProgram();
    gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) {
      throw new Error("program: " + gl.getProgramInfoLog(program));
    }
    return program;
  }

  class PointViewer {
    constructor(canvas) {
      this.canvas = canvas;
      this.count = 0;
      this.gl = null;
      try {
        const options = { preserveDrawingBuffer: true, antialias: false };
        this.gl = canvas.getContext("webgl", options) || canvas.getContext("experimental-webgl", options);
        if (this.gl) this.program = makeProgram(this.gl);
      } catch (error) {
        console.warn("WebGL unavailable, drawing points on a 2-D canvas:", error);
        this.gl = null;
      }
      this.mode = this.gl ? "webgl" : "2d";
      this.ctx = this.gl ? null : canvas.getContext("2d");
      this.bindControls();
    }

    show(positions, colours) {
      // OpenCV camera frame -> GL frame (x right, y up, z towards the viewer): (x, -y, -z).
      const n = Math.floor(positions.length / 3);
      const xyz = new Float32Array(n * 3);
      let cx = 0, cy = 0, cz = 0;
      for (let i = 0; i < n; i++) {
        xyz[3 * i] = positions[3 * i];
        xyz[3 * i + 1] = -positions[3 * i + 1];
        xyz[3 * i + 2] = -positions[3 * i + 2];
        cx += xyz[3 * i]; cy += xyz[3 * i + 1]; cz += xyz[3 * i + 2];
      }
      this.count = n;
      this.xyz = xyz;
      this.rgb = colours;
      this.centre = n ? [cx / n, cy / n, cz / n] : [0, 0, -1];
      let radius = 0;
      for (let i = 0; i < n; i += 7) {
        radius = Math.max(radius, Math.hypot(xyz[3 * i] - this.centre[0], xyz[3 * i + 1] - this.centre[1], xyz[3 * i + 2] - this.centre[2]));
      }
      this.radius = radius || 1;
      if (this.gl) this.upload();
      this.reset();
    }

    reset() {
      // Start near the photo's camera (the origin), turned a little to the right and up so that
      // the relief shows, looking at the centre of the points.
      const c = this.centre || [0, 0, -1];
      const fromCamera = Math.hypot(c[0], c[1], c[2]) || this.radius * 2;
      this.yaw = Math.atan2(-c[0], -c[2]) + 0.35;
      this.pitch = Math.asin(Math.max(-1, Math.min(1, -c[1] / fromCamera))) + 0.15;
      this.distance = fromCamera * 1.3;
      this.draw();
    }

    upload() {
      const gl = this.gl;
      this.positionBuffer = this.positionBuffer || gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, this.positionBuffer);
      gl.bufferData(gl.ARRAY_BUFFER, this.xyz, gl.STATIC_DRAW);
      this.colourBuffer = this.colourBuffer || gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, this.colourBuffer);
      gl.bufferData(gl.ARRAY_BUFFER, this.rgb, gl.STATIC_DRAW);
    }

    matrix() {
      const c = this.centre;
      const eye = [
        c[0] + this.distance * Math.cos(this.pitch) * Math.sin(this.yaw),
        c[1] + this.distance * Math.sin(this.pitch),
        c[2] + this.distance * Math.cos(this.pitch) * Math.cos(this.yaw),
      ];
      const aspect = this.canvas.width / this.canvas.height;
      const near = Math.max(this.distance - 2 * this.radius, this.distance * 0.01, 1e-3);
      const far = this.distance + 3 * this.radius;
      return multiply(perspective((50 * Math.PI) / 180, aspect, near, far), lookAt(eye, c, [0, 1, 0]));
    }

    draw() {
      if (!this.count) return;
      const mvp = this.matrix();
      if (this.gl) this.drawWebGL(mvp); else this.draw2D(mvp);
    }

    drawWebGL(mvp) {
      const gl = this.gl;
      gl.viewport(0, 0, this.canvas.width, this.canvas.height);
      gl.clearColor(0.043, 0.047, 0.063, 1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      gl.enable(gl.DEPTH_TEST);
      gl.useProgram(this.program);
      const position = gl.getAttribLocation(this.program, "position");
      gl.bindBuffer(gl.ARRAY_BUFFER, this.positionBuffer);
      gl.enableVertexAttribArray(position);
      gl.vertexAttribPointer(position, 3, gl.FLOAT, false, 0, 0);
      const colour = gl.getAttribLocation(this.program, "colour");
      gl.bindBuffer(gl.ARRAY_BUFFER, this.colourBuffer);
      gl.enableVertexAttribArray(colour);
      gl.vertexAttribPointer(colour, 3, gl.UNSIGNED_BYTE, true, 0, 0);
      gl.uniformMatrix4fv(gl.getUniformLocation(this.program, "mvp"), false, mvp);
      gl.uniform1f(gl.getUniformLocation(this.program, "size"), 2.0);
      gl.drawArrays(gl.POINTS, 0, this.count);
    }

    draw2D(mvp) {
      const ctx = this.ctx, w = this.canvas.width, h = this.canvas.height;
      ctx.fillStyle = "#0b0c10";
      ctx.fillRect(0, 0, w, h);
      const image = ctx.getImageData(0, 0, w, h);
      const pixels = image.data;
      const zbuf = new Float32Array(w * h).fill(Infinity);
      const xyz = this.xyz, rgb = this.rgb;
      for (let i = 0; i < this.count; i++) {
        const x = xyz[3 * i], y = xyz[3 * i + 1], z = xyz[3 * i + 2];
        const cw = mvp[3] * x + mvp[7] * y + mvp[11] * z + mvp[15];
        if (cw <= 0) continue;
        const nx = (mvp[0] * x + mvp[4] * y + mvp[8] * z + mvp[12]) / cw;
        const ny = (mvp[1] * x + mvp[5] * y + mvp[9] * z + mvp[13]) / cw;
        const nz = (mvp[2] * x + mvp[6] * y + mvp[10] * z + mvp[14]) / cw;
        if (nx < -1 || nx > 1 || ny < -1 || ny > 1 || nz < -1 || nz > 1) continue;
        const px = Math.floor(((nx + 1) / 2) * w), py = Math.floor(((1 - ny) / 2) * h);
        for (let dy = 0; dy < 2; dy++) {
          for (let dx = 0; dx < 2; dx++) {
            const qx = px + dx, qy = py + dy;
            if (qx >= w || qy >= h) continue;
            const k = qy * w + qx;
            if (nz >= zbuf[k]) continue;
            zbuf[k] = nz;
            pixels[4 * k] = rgb[3 * i]; pixels[4 * k + 1] = rgb[3 * i + 1]; pixels[4 * k + 2] = rgb[3 * i + 2]; pixels[4 * k + 3] = 255;
          }
        }
      }
      ctx.putImageData(image, 0, 0);
    }

    bindControls() {
      const canvas = this.canvas;
      let last = null;
      canvas.addEventListener("pointerdown", (event) => {
        last = [event.clientX, event.clientY];
        canvas.setPointerCapture(event.pointerId);
      });
      canvas.addEventListener("pointermove", (event) => {
        if (!last || !this.count) return;
        const dx = event.clientX - last[0], dy = event.clientY - last[1];
        last = [event.clientX, event.clientY];
        this.yaw -= dx * 0.01;
        this.pitch = Math.max(-1.5, Math.min(1.5, this.pitch + dy * 0.01));
        this.draw();
      });
      const stop = () => { last = null; };
      canvas.addEventListener("pointerup", stop);
      canvas.addEventListener("pointercancel", stop);
      canvas.addEventListener("wheel", (event) => {
        if (!this.count) return;
        event.preventDefault();
        this.distance = Math.max(this.radius * 0.05, this.distance * Math.exp(event.deltaY * 0.001));
        this.draw();
      }, { passive: false });
      canvas.addEventListener("dblclick", () => this.reset());
    }
  }

  window.PointViewer = PointViewer;
})();
