import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  ISessionContext,
  Notification
} from '@jupyterlab/apputils';
import { IConsoleTracker } from '@jupyterlab/console';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import { JobChannel } from './channel';
import { JobItem } from './item';
import { IJobNotice } from './protocol';

const RESTART_COMMAND = 'inplace-restarter:restart-kernel';

/** A notice seen by two channels on one kernel (a notebook and its console) is shown once. */
const SAME_NOTICE_MS = 60_000;

/**
 * For notebooks and consoles on a proxied kernel: the kernel's batch job in
 * the status bar (in Notebook 7, which has none, in the notebook's toolbar),
 * its notices as notifications, and *Restart Kernel in Place*.
 */
const plugin: JupyterFrontEndPlugin<void> = {
  id: 'inplace-restarter:plugin',
  description: 'The batch job of a proxied kernel, its notices, and Restart Kernel in Place.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [
    IConsoleTracker,
    ILabShell,
    IStatusBar,
    IMainMenu,
    ICommandPalette,
    ITranslator
  ],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    consoles: IConsoleTracker | null,
    labShell: ILabShell | null,
    statusBar: IStatusBar | null,
    mainMenu: IMainMenu | null,
    palette: ICommandPalette | null,
    translator: ITranslator | null
  ) => {
    translator = translator ?? nullTranslator;
    const trans = translator.load('inplace_restarter');
    const channels = new Map<ISessionContext, JobChannel>();
    const shown = new Map<string, number>();

    const notify = (channel: JobChannel, notice: IJobNotice) => {
      const key = `${channel.sessionContext.session?.kernel?.id} ${notice.text}`;
      const now = performance.now();
      if (now - (shown.get(key) ?? -Infinity) < SAME_NOTICE_MS) {
        return;
      }
      shown.set(key, now);
      Notification.emit(notice.text, notice.level, { autoClose: false });
    };

    const channelOf = (sessionContext: ISessionContext): JobChannel => {
      let channel = channels.get(sessionContext);
      if (!channel) {
        channel = new JobChannel(sessionContext);
        channel.noticeReceived.connect(notify);
        sessionContext.disposed.connect(() => channels.delete(sessionContext));
        channels.set(sessionContext, channel);
      }
      return channel;
    };

    /** The channel of the current notebook or console, if any. */
    const currentChannel = (): JobChannel | null => {
      const widget = app.shell.currentWidget;
      const sessionContext =
        (widget && (notebooks.has(widget) || consoles?.has(widget))
          ? (widget as Widget & { sessionContext: ISessionContext }).sessionContext
          : null) ?? null;
      return sessionContext ? channelOf(sessionContext) : null;
    };

    notebooks.widgetAdded.connect((_, panel) => {
      const channel = channelOf(panel.sessionContext);
      if (!statusBar) {
        addToToolbar(panel, channel, translator!);
      }
    });
    consoles?.widgetAdded.connect((_, panel) => channelOf(panel.sessionContext));

    if (statusBar) {
      const item = new JobItem(translator);
      const follow = () => {
        item.channel = currentChannel();
      };
      labShell?.currentChanged.connect(follow);
      notebooks.currentChanged.connect(follow);
      consoles?.currentChanged.connect(follow);
      statusBar.registerStatusItem(plugin.id, {
        item,
        align: 'left',
        rank: 5,
        isActive: () => item.isActive,
        activeStateChanged: item.activeStateChanged
      });
    }

    app.commands.addCommand(RESTART_COMMAND, {
      label: trans.__('Restart Kernel in Place'),
      caption: trans.__(
        'Restart the kernel inside its batch job, without asking: the variables are gone, the job stays'
      ),
      isEnabled: () => !!currentChannel()?.state,
      execute: async () => {
        await currentChannel()?.sessionContext.restartKernel();
      }
    });
    mainMenu?.kernelMenu.addGroup([{ command: RESTART_COMMAND }], 0);
    palette?.addItem({
      command: RESTART_COMMAND,
      category: trans.__('Kernel Operations')
    });
  }
};

/** Notebook 7 shows kernel status in the notebook's toolbar: the job goes there too. */
function addToToolbar(
  panel: NotebookPanel,
  channel: JobChannel,
  translator: ITranslator
): void {
  const item = new JobItem(translator);
  item.channel = channel;
  panel.toolbar.addItem('inplaceRestarterJob', item);
}

export default plugin;
