// OHIF's configuration as this server serves it at /ohif/app-config.js, in place of the one in the
// monailabel wheel. What differs:
// - the MONAI Label mode gets OHIF's own segmentation panel and tools (brush, eraser, threshold, shapes;
//   segments added, renamed, deleted; "Export DICOM SEG"), which the wheel's mode defines but leaves out of its
//   layout; Export DICOM SEG stores through /proxy/dicom (STOW-RS) and the server imports that SEG as the
//   study's final label (lib/pacs/proxy.py, lib/pacs/seg_import.py);
// - the panel's errors carry the server's reason, and a running training shows its progress;
// - a stored SEG opened from the study browser is previewed in one view, not in all three MPR views;
// - no "reject series" (Orthanc's REST API, which the proxy does not forward).
// Written against the OHIF 3.10 build in the pinned monailabel wheel; tests/e2e/test_ohif_session.py fails
// if a new build moves the pieces named here.
const SEGMENTATION_PANEL = '@ohif/extension-cornerstone.panelModule.panelSegmentationWithTools';

// The panel's "Export DICOM SEG" runs the dicom-seg extension's storeSegmentation command without the data
// source to store to, and in this build that command then fails ("reading 'store'" of undefined) after asking
// for the series name: the SEG is never sent. Here it stores to the active data source, the PACS behind the proxy.
function storeToTheActiveDataSource(commandsManager, extensionManager) {
  for (const context of Object.values(commandsManager.contexts)) {
    const command = context.storeSegmentation;
    if (command && !command.storesToActiveDataSource) {
      context.storeSegmentation = {
        ...command,
        storesToActiveDataSource: true,
        commandFn: (options) => command.commandFn({ ...options, dataSource: options.dataSource ?? extensionManager.getActiveDataSource()[0] }),
      };
    }
  }
}

// A double-clicked (or dropped) SEG goes, by the MPR hanging protocol, into all three views, and two of them
// cannot show it ("Volume display set not found"); the tool groups their previews leave behind then crash the
// brush and the segment list now and then. Here a stored segmentation is previewed in the view it was opened
// in only, as in a layout of one's own; its LOAD puts the segmentation on the CT in all three.
const PREVIEWED_ALONE = ['SEG', 'RTSTRUCT'];
function previewSegmentationsInOneView(hangingProtocolService, displaySetService) {
  const viewportsToUpdate = hangingProtocolService.getViewportsRequireUpdate;
  if (viewportsToUpdate.previewsSegmentationsAlone) {
    return;
  }
  const previewAlone = function (viewportId, displaySetInstanceUID, isHangingProtocolLayout) {
    const modality = displaySetService.getDisplaySetByUID(displaySetInstanceUID)?.Modality;
    return viewportsToUpdate.call(this, viewportId, displaySetInstanceUID, isHangingProtocolLayout && !PREVIEWED_ALONE.includes(modality));
  };
  previewAlone.previewsSegmentationsAlone = true;
  hangingProtocolService.getViewportsRequireUpdate = previewAlone;
}

// The panel's errors say what failed ("Failed to RUN training"), not why; the server's 4xx answer says why
// ("training needs the role monailabel-admin"). Its answers are read as they arrive and the reason of the last
// refusal is added to the panel's error that follows it.
function withServerReasons(uiNotificationService) {
  if (uiNotificationService.withServerReasons) return;
  let refusal = null;
  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.addEventListener('loadend', () => {
      if (this.status >= 400 && this.status < 500 && !String(url).includes('/proxy/dicom/')) {
        refusal = { at: Date.now(), reason: `${this.status} ${answerDetail(this)}` };
      }
    });
    return open.call(this, method, url, ...rest);
  };
  // On the class: the panel's tabs each make a notification service of their own.
  const service = Object.getPrototypeOf(uiNotificationService);
  const show = service.show;
  service.show = function (options) {
    if (options.type === 'error' && options.title === 'MONAI Label' && refusal && Date.now() - refusal.at < 10000) {
      options = { ...options, message: `${options.message}: ${refusal.reason}`, duration: 15000 };
      refusal = null;
    }
    return show.call(this, options);
  };
  service.withServerReasons = true;
}

function answerDetail(request) {
  let body = request.response;
  try {
    if (body instanceof ArrayBuffer) body = JSON.parse(new TextDecoder().decode(body));
    else if (typeof body === 'string') body = JSON.parse(body);
  } catch (e) {
    return request.statusText;
  }
  const detail = body && body.detail;
  return typeof detail === 'string' ? detail : JSON.stringify(detail ?? body);
}

// The panel reads the training's progress once, when it connects. While a run goes on, its epochs, loss and
// validation Dice (/info/ train_stats) are shown as they come, every epoch, and once more when it ends: as a
// notification, and on a line at the foot of the MONAI Label panel (kept there after the run).
const TRAINING_POLL_MS = 5000;

function showInPanel(line) {
  const panel = document.querySelector('.monaiLabelPanel');
  if (!panel) return;
  let status = panel.querySelector('[data-cy="training-progress"]');
  if (!status) {
    status = document.createElement('p');
    status.setAttribute('data-cy', 'training-progress');
    status.style.cssText = 'color: white; font-size: smaller; margin: 8px 4px';
    panel.appendChild(status);
  }
  status.textContent = `Training ${line}`;
}

function trainingProgress(uiNotificationService) {
  if (window.trainingProgressShown) return;
  window.trainingProgressShown = true;
  let running = false;
  let shown = '';
  const poll = async () => {
    try {
      const status = await fetch('/train/?check_if_running=true', { credentials: 'same-origin' });
      const wasRunning = running;
      running = status.ok && (await status.json()).status === 'RUNNING';
      if (!running && !wasRunning) return;
      const info = await fetch('/info/', { credentials: 'same-origin' });
      if (!info.ok) return;
      for (const [model, stats] of Object.entries((await info.json()).train_stats || {})) {
        if (!stats || !stats.epoch || !stats.start_ts || Date.now() / 1000 - stats.start_ts > 86400) continue;
        const line = trainingLine(model, stats);
        showInPanel(line);
        if (line === shown) continue;
        shown = line;
        uiNotificationService.show({ title: 'MONAI Label training', message: line, type: stats.total_time ? 'success' : 'info', duration: 10000 });
      }
    } catch (e) {
      console.warn('training progress', e);
    }
  };
  setInterval(poll, TRAINING_POLL_MS);
}

function trainingLine(model, stats) {
  const parts = [`${model}: epoch ${stats.epoch}/${stats.total_epochs}`];
  if (typeof stats.loss === 'number') parts.push(`loss ${stats.loss.toFixed(3)}`);
  if (typeof stats.best_metric === 'number') parts.push(`validation Dice ${stats.best_metric.toFixed(3)}`);
  if (stats.total_time) parts.push(`finished in ${stats.total_time}`);
  return parts.join(', ');
}

// The wheel's MONAI Label mode, with the segmentation panel beside the MONAI Label panel. Modes listed here
// load before OHIF's own, so this one takes the MONAI Label mode's id and route.
const monaiLabelWithSegmentationTools = {
  id: '@ohif/mode-monai-label',
  extensionDependencies: {
    '@ohif/extension-default': '^3.0.0',
    '@ohif/extension-cornerstone': '^3.0.0',
    '@ohif/extension-cornerstone-dicom-seg': '^3.0.0',
    '@ohif/extension-monai-label': '^3.0.0',
  },
  modeFactory: async ({ modeConfiguration, loadModules }) => {
    const [monaiLabelMode, segmentationMode] = await loadModules(['@ohif/mode-monai-label', '@ohif/mode-segmentation']);
    const mode = monaiLabelMode.modeFactory({ modeConfiguration });
    const route = mode.routes[0];
    const layoutTemplate = route.layoutTemplate;
    route.layoutTemplate = (args) => {
      const layout = layoutTemplate(args);
      layout.props.rightPanels = [...layout.props.rightPanels, SEGMENTATION_PANEL];
      return layout;
    };
    // The MONAI Label mode already makes the 'segmentationToolbox' section of the BrushTools and Shapes
    // buttons and the tools behind them, but not the buttons: those are the segmentation mode's. Its
    // onModeEnter is run with services that take its buttons and nothing else.
    const buttonsOnly = segmentationMode.modeFactory({ modeConfiguration: {} });
    const onModeEnter = mode.onModeEnter;
    mode.onModeEnter = (args) => {
      onModeEnter(args);
      const { toolbarService } = args.servicesManager.services;
      const services = {
        ...args.servicesManager.services,
        measurementService: { clearMeasurements: () => {} },
        toolGroupService: { createToolGroupAndAddTools: () => {} },
        toolbarService: { addButtons: (buttons) => toolbarService.addButtons(buttons), createButtonSection: () => {} },
      };
      buttonsOnly.onModeEnter({ ...args, servicesManager: { ...args.servicesManager, services } });
      storeToTheActiveDataSource(args.commandsManager, args.extensionManager);
      previewSegmentationsInOneView(args.servicesManager.services.hangingProtocolService, args.servicesManager.services.displaySetService);
      withServerReasons(args.servicesManager.services.uiNotificationService);
      trainingProgress(args.servicesManager.services.uiNotificationService);
    };
    return mode;
  },
};

window.config = {
  routerBasename: '/ohif/',
  showStudyList: true,
  extensions: [],
  modes: [monaiLabelWithSegmentationTools],
  showWarningMessageForCrossOrigin: true,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'dicomweb',
  useSharedArrayBuffer: 'FALSE',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'PACS (through the MONAI Label server)',
        name: 'pacs',
        wadoUriRoot: '/proxy/dicom/wado',
        qidoRoot: '/proxy/dicom/qido',
        wadoRoot: '/proxy/dicom/wado',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: false,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        dicomUploadEnabled: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
